import CLinux
import Foundation
import Glibc

/// How a mirror file says which in-sync period of which disk it holds: a random 128-bit
/// generation id in the extended attribute `user.swiftvmm.mirror`, or — on a file system
/// without user attributes — in a sidecar file `MIRROR.swiftvmm-mirror`. Path-independent: a
/// migration target finds it on its own path for the volume. What it reads is untrusted.
public enum MirrorIdentity {
    public static let attribute = "user.swiftvmm.mirror"
    static let prefix = "swiftvmm-mirror-v1 "
    static let sidecarSuffix = ".swiftvmm-mirror"

    /// A fresh random generation id, 32 hex digits.
    public static func newGeneration() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Whether `s` is a well-formed generation id.
    public static func isGeneration(_ s: String) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// Records `generation` in the mirror open as `fd` (its data already synced); false when
    /// neither the attribute nor the sidecar could be written.
    static func record(_ generation: String, fd: Int32, path: String) -> Bool {
        let value = Array((prefix + generation).utf8)
        if clinux_fsetxattr(fd, attribute, value, value.count) == 0 {
            unlink(path + sidecarSuffix)
            return true
        }
        guard errno == ENOTSUP || errno == EOPNOTSUPP else { return false }
        let sidecar = path + sidecarSuffix, temporary = sidecar + ".new"
        let out = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { return false }
        let ok = DiskMirror.pwriteAll(out, value, count: value.count, offset: 0) == nil && fsync(out) == 0
        close(out)
        guard ok, rename(temporary, sidecar) == 0 else { unlink(temporary); return false }
        return true
    }

    /// The generation a file at `path` carries as a mirror, or nil (none, or not well-formed).
    public static func read(path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 128)
        var n = clinux_getxattr(path, attribute, &buffer, buffer.count)
        if n < 0 {
            let fd = open(path + sidecarSuffix, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            n = Glibc.read(fd, &buffer, buffer.count)
            close(fd)
        }
        guard n > 0 else { return nil }
        let text = String(decoding: buffer.prefix(Int(n)), as: UTF8.self)
        guard text.hasPrefix(prefix) else { return nil }
        let generation = String(text.dropFirst(prefix.count))
        return isGeneration(generation) ? generation : nil
    }

    /// Checksum (FNV-1a, 64 bits, hex) of a dirty-region map bound to its generation and size:
    /// what a target recomputes for an empty map of its own image to confirm "in sync".
    public static func mapChecksum(generation: String, map: BlockBitmap) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ x: UInt64) { h = (h ^ x) &* 0x100_0000_01B3 }
        for b in generation.utf8 { mix(UInt64(b)) }
        mix(UInt64(map.blocks))
        for w in map.words { mix(w) }
        return String(format: "%016llx", h)
    }

    /// The checksum of an empty map for a disk of `bytes` bytes in generation `generation`.
    public static func emptyMapChecksum(generation: String, bytes: UInt64) -> String {
        mapChecksum(generation: generation, map: BlockBitmap(blocks: Int((bytes + DiskMirror.blockSize - 1) / DiskMirror.blockSize)))
    }
}

/// One bit per block of a disk.
public struct BlockBitmap: Sendable, Equatable {
    public let blocks: Int
    public private(set) var words: [UInt64]
    /// Blocks set.
    public private(set) var count = 0

    public init(blocks: Int) {
        self.blocks = blocks
        words = [UInt64](repeating: 0, count: (blocks + 63) / 64)
    }

    public func contains(_ b: Int) -> Bool { b >= 0 && b < blocks && words[b / 64] & (1 << UInt64(b % 64)) != 0 }

    public mutating func set(_ b: Int) {
        guard b >= 0, b < blocks, !contains(b) else { return }
        words[b / 64] |= 1 << UInt64(b % 64)
        count += 1
    }

    public mutating func clear(_ b: Int) {
        guard contains(b) else { return }
        words[b / 64] &= ~(1 << UInt64(b % 64))
        count -= 1
    }

    public mutating func setAll() { for b in 0..<blocks { set(b) } }

    public mutating func clearAll() {
        guard count > 0 else { return }
        for i in words.indices { words[i] = 0 }
        count = 0
    }

    /// Sets the blocks `[offset, offset+length)` touches.
    public mutating func mark(offset: UInt64, length: UInt64, blockSize: UInt64) {
        guard length > 0 else { return }
        let first = offset / blockSize, last = (offset + length - 1) / blockSize
        var b = first
        while b <= last && b < UInt64(blocks) { set(Int(b)); b += 1 }
    }

    public mutating func formUnion(_ other: BlockBitmap) {
        for i in 0..<min(words.count, other.words.count) where other.words[i] & ~words[i] != 0 {
            count += (other.words[i] & ~words[i]).nonzeroBitCount
            words[i] |= other.words[i]
        }
    }

    /// The first block set at or after `from`.
    public func first(from: Int) -> Int? {
        var i = max(from, 0) / 64
        guard i < words.count else { return nil }
        var w = words[i] & (~0 << UInt64(max(from, 0) % 64))
        while true {
            if w != 0 { return i * 64 + w.trailingZeroBitCount }
            i += 1
            guard i < words.count else { return nil }
            w = words[i]
        }
    }
}
