import COpenSSL

/// A secret of the sealed stream (a derived key): its bytes, compared in constant time.
public struct SecretKey: Equatable, Sendable {
    let bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var bitCount: Int { bytes.count * 8 }

    public static func == (a: SecretKey, b: SecretKey) -> Bool { Auth.equal(a.bytes, b.bytes) }
}

/// HMAC-SHA256 and HKDF-SHA256 (RFC 2104, RFC 5869) from OpenSSL's libcrypto, the library the
/// stream already seals with.
public enum KeyDerivation {
    /// HMAC-SHA256 of the concatenation of `parts` under `key`.
    public static func hmacSHA256(key: [UInt8], _ parts: [[UInt8]]) -> [UInt8] {
        let message = parts.flatMap { $0 }
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard HMAC(EVP_sha256(), key, Int32(key.count), message, message.count, &out, &length) != nil,
              length == 32 else { return [] }
        return out
    }

    /// HKDF-SHA256 (extract and expand) of `count` bytes; nil if libcrypto refuses.
    public static func hkdfSHA256(key: [UInt8], salt: [UInt8], info: [UInt8], count: Int) -> [UInt8]? {
        guard let ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nil) else { return nil }
        defer { EVP_PKEY_CTX_free(ctx) }
        var out = [UInt8](repeating: 0, count: count)
        var length = count
        guard EVP_PKEY_derive_init(ctx) == 1,
              EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) == 1,
              EVP_PKEY_CTX_set1_hkdf_salt(ctx, salt, Int32(salt.count)) == 1,
              EVP_PKEY_CTX_set1_hkdf_key(ctx, key, Int32(key.count)) == 1,
              EVP_PKEY_CTX_add1_hkdf_info(ctx, info, Int32(info.count)) == 1,
              EVP_PKEY_derive(ctx, &out, &length) == 1, length == count else { return nil }
        return out
    }
}
