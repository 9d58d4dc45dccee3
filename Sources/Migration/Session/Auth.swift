import Foundation

/// Pre-shared-key authentication of both peers: each proves it holds the key by an
/// HMAC-SHA256 over both sides' random nonces and its role.
public enum Auth {
    public static let nonceBytes = 32

    /// Which side proves the key: each side's proof names it, so one cannot stand for the other.
    public enum Role: String, Sendable {
        case source = "send", target = "recv"
    }

    public static func nonce() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<nonceBytes).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    public static func proof(key: [UInt8], role: Role, first: [UInt8], second: [UInt8]) -> [UInt8] {
        KeyDerivation.hmacSHA256(key: key, [Array(role.rawValue.utf8), first, second])
    }

    /// Constant-time comparison.
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var d: UInt8 = 0
        for (x, y) in zip(a, b) { d |= x ^ y }
        return d == 0
    }

    /// Reads a key file: its bytes, with surrounding whitespace trimmed; at least 16 bytes.
    public static func loadKey(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MigrationError.usage("cannot read key file '\(path)'")
        }
        var bytes = Array(data)
        while let l = bytes.last, l == 10 || l == 13 || l == 32 || l == 9 { bytes.removeLast() }
        while let f = bytes.first, f == 10 || f == 13 || f == 32 || f == 9 { bytes.removeFirst() }
        guard bytes.count >= 16 else { throw MigrationError.usage("key file '\(path)' holds \(bytes.count) bytes; use at least 16 (e.g. head -c 32 /dev/urandom | base64)") }
        return bytes
    }
}

extension Array where Element == UInt8 {
    /// Lower-case hex, two digits a byte.
    public var hexString: String { map { String(format: "%02x", $0) }.joined() }

    /// Parses hex (an even number of digits); nil for anything else.
    public init?(hexString: String) {
        let chars = Array(hexString.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let v = UInt8(String(decoding: chars[i..<(i + 2)], as: UTF8.self), radix: 16) else { return nil }
            out.append(v)
            i += 2
        }
        self = out
    }
}
