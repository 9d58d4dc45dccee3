import COpenSSL
import Foundation

/// The sealed stream: with a pre-shared key, every section after the handshake is encrypted
/// and authenticated with AES-256-GCM (chosen over ChaCha20-Poly1305 by measurement: with
/// AES-NI and VAES both BoringSSL and OpenSSL run it at several GB/s, ChaCha20-Poly1305 at a
/// fraction of that). Keys come from libcrypto's HKDF (`KeyDerivation`); sections are sealed in
/// place by libcrypto too (`GCM`).
///
/// - Keys: one per direction, HKDF-SHA256 over the pre-shared key, salted with the source's
///   nonce followed by the target's (both fresh for this connection), info
///   `swiftvmm stream v2 source->target` or `… target->source`. A key never seals two streams.
/// - Nonce: 4 zero bytes and the section's sequence number in that direction (u64, big-endian,
///   from 0). The receiver expects the next number, so a dropped, reordered or replayed section
///   fails to open, like an altered one.
/// - Section: `u16 sealed (16) | u16 flags 0 | u32 length | ciphertext | 16-byte tag` — no CRC,
///   the tag covers it. The 8-byte header is the additional authenticated data; the plaintext is
///   `payload | u16 type | u16 flags`, so section types travel sealed as well (at the end, so
///   the receiver strips them without moving the payload).
public struct StreamKeys {
    @_spi(Fuzzing) public let seal: SecretKey
    @_spi(Fuzzing) public let open: SecretKey

    /// The keys of `role`'s side of the connection whose nonces are `sourceNonce` and `targetNonce`.
    /// Extra data connection `channel` (1…N−1, `--connections N`) of the same migration has keys
    /// of its own: info `swiftvmm stream v2 channel <i> source->target` and the reverse.
    public static func derive(key: [UInt8], sourceNonce: [UInt8], targetNonce: [UInt8], role: Auth.Role,
                              channel: Int = 0) -> StreamKeys {
        func derive(_ info: String) -> SecretKey {
            // An empty key (libcrypto refused) makes `GCM` refuse to start: nothing is sealed with it.
            SecretKey(KeyDerivation.hkdfSHA256(key: key, salt: sourceNonce + targetNonce,
                                               info: Array(info.utf8), count: 32) ?? [])
        }
        let stream = channel == 0 ? "swiftvmm stream v2" : "swiftvmm stream v2 channel \(channel)"
        let toTarget = derive("\(stream) source->target")
        let toSource = derive("\(stream) target->source")
        return role == .source ? StreamKeys(seal: toTarget, open: toSource) : StreamKeys(seal: toSource, open: toTarget)
    }
}

/// Seals the sections one direction sends, each in place in the sender's buffer.
@_spi(Fuzzing) public final class SectionSealer {
    static let tagSize = 16
    private let gcm: GCM
    private(set) var sequence: UInt64 = 0

    @_spi(Fuzzing) public init(key: SecretKey) throws { gcm = try GCM(key: key, encrypting: true) }

    /// Encrypts `buffer[0..<count]` in place as the next section and writes its tag into
    /// `buffer[count..<count + 16]`; `header` is authenticated with it.
    @_spi(Fuzzing) public func seal(_ buffer: UnsafeMutableRawBufferPointer, count: Int, header: [UInt8]) throws {
        defer { sequence += 1 }
        guard buffer.count >= count + Self.tagSize,
              gcm.run(buffer, count: count, nonce: Self.nonce(sequence), header: header, tagAt: count) else {
            throw MigrationError.stream("cannot seal section \(sequence)")
        }
    }

    /// 4 zero bytes and the sequence number, big-endian.
    static func nonce(_ sequence: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { bytes[4 + i] = UInt8(truncatingIfNeeded: sequence >> (56 - 8 * UInt64(i))) }
        return bytes
    }
}

/// Opens the sections one direction receives, in order, in place.
@_spi(Fuzzing) public final class SectionOpener {
    private let gcm: GCM
    private(set) var sequence: UInt64 = 0

    @_spi(Fuzzing) public init(key: SecretKey) throws { gcm = try GCM(key: key, encrypting: false) }

    /// Replaces `body` (ciphertext and tag) by its plaintext, or throws "stream authentication
    /// failed at section N" (and `body` holds garbage).
    @_spi(Fuzzing) public func open(_ body: inout [UInt8], header: [UInt8]) throws {
        let n = sequence
        guard body.count >= SectionSealer.tagSize else { throw Self.failed(n) }
        let count = body.count - SectionSealer.tagSize
        let ok = body.withUnsafeMutableBytes { gcm.run($0, count: count, nonce: SectionSealer.nonce(n), header: header, tagAt: count) }
        guard ok else { throw Self.failed(n) }
        body.removeLast(SectionSealer.tagSize)
        sequence += 1
    }

    static func failed(_ n: UInt64) -> MigrationError {
        .stream("stream authentication failed at section \(n): the stream was altered, reordered, replayed or cut")
    }
}

/// AES-256-GCM through OpenSSL's EVP interface (libcrypto), in place: swift-crypto's sealing
/// API (measured first) returns a freshly built box per message, which cost three copies of every sealed byte
/// and made sealing ten times slower than opening here.
final class GCM {
    private let ctx: OpaquePointer
    private let encrypting: Bool

    init(key: SecretKey, encrypting: Bool) throws {
        guard key.bitCount == 256, let ctx = EVP_CIPHER_CTX_new() else { throw MigrationError.stream("cannot set up AES-256-GCM") }
        self.ctx = ctx
        self.encrypting = encrypting
        let ok = encrypting ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key.bytes, nil) == 1
                            : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key.bytes, nil) == 1
        guard ok else { EVP_CIPHER_CTX_free(ctx); throw MigrationError.stream("cannot set up AES-256-GCM") }
    }

    deinit { EVP_CIPHER_CTX_free(ctx) }

    /// Encrypts (or decrypts and verifies) `buffer[0..<count]` in place under a 12-byte nonce,
    /// with `header` as additional data; the tag is written to (or read from) `tagAt`.
    func run(_ buffer: UnsafeMutableRawBufferPointer, count: Int, nonce: [UInt8], header: [UInt8], tagAt: Int) -> Bool {
        guard count >= 0, count <= Int(Int32.max), tagAt + SectionSealer.tagSize <= buffer.count,
              let base = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return false }
        var n: Int32 = 0
        let tag = base + tagAt
        if encrypting {
            guard EVP_EncryptInit_ex(ctx, nil, nil, nil, nonce) == 1,
                  EVP_EncryptUpdate(ctx, nil, &n, header, Int32(header.count)) == 1,
                  EVP_EncryptUpdate(ctx, base, &n, base, Int32(count)) == 1,
                  EVP_EncryptFinal_ex(ctx, base + Int(n), &n) == 1 else { return false }
            return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(SectionSealer.tagSize), tag) == 1
        }
        guard EVP_DecryptInit_ex(ctx, nil, nil, nil, nonce) == 1,
              EVP_DecryptUpdate(ctx, nil, &n, header, Int32(header.count)) == 1,
              EVP_DecryptUpdate(ctx, base, &n, base, Int32(count)) == 1,
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, Int32(SectionSealer.tagSize), tag) == 1 else { return false }
        return EVP_DecryptFinal_ex(ctx, base + Int(n), &n) == 1
    }
}
