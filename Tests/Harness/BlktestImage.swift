import Foundation
import Glibc

/// A disk written by blktest's `loop` mode (and soak.elf's writer): blocks of 4 KiB in
/// blktest's format (GuestImages/README.md, "Block format"), write s going to block s mod
/// `blocks`. Checks that an image holds every write the guest was told is on disk.
public struct BlktestImage: Sendable {
    public static let blockSize = 4096
    public static let magic: UInt64 = 0x314B_4C42_4D56_5753

    /// What a block holds.
    public enum Block: Equatable, Sendable {
        case empty
        case written(seq: Int)
        case bad(String)
    }

    public let path: String
    public let blocks: Int

    public init(path: String, blocks: Int) {
        self.path = path
        self.blocks = blocks
    }

    /// Decodes block `b` from its 512 little-endian words.
    public static func decode(_ w: [UInt64], block b: Int) -> Block {
        if w.allSatisfy({ $0 == 0 }) { return .empty }
        guard w[0] == magic else { return .bad("magic") }
        guard w[1] == UInt64(b) else { return .bad("block number \(w[1])") }
        guard w[3] == UInt64(blockSize) else { return .bad("block size") }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for x in w.dropLast() { h = (h ^ x) &* 0x100_0000_01B3 }
        guard h == w[511] else { return .bad("checksum") }
        let base = (UInt64(b) &* 0x9E37_79B9_7F4A_7C15) ^ (w[2] &* 0xC2B2_AE3D_27D4_EB4F)
        for k in 4..<511 where w[k] != base ^ UInt64(k) { return .bad("pattern") }
        return .written(seq: Int(w[2]))
    }

    /// The sequence number block `b` holds after writes 1…`last`, or nil when none of them
    /// went to it.
    public func expectedSeq(block b: Int, last: Int) -> Int? {
        guard last >= 1 else { return nil }
        let s = last - ((last - b) % blocks + blocks) % blocks
        return s >= 1 ? s : nil
    }

    /// Reads block `b`; one torn by a write in progress is read again (at most `retries` times).
    func read(_ fd: Int32, block b: Int, retries: Int) throws -> Block {
        var words = [UInt64](repeating: 0, count: Self.blockSize / 8)
        var result = Block.empty
        for _ in 0...retries {
            let n = words.withUnsafeMutableBytes { pread(fd, $0.baseAddress, Self.blockSize, off_t(b * Self.blockSize)) }
            guard n == Self.blockSize else { throw HarnessError("\(path): short read of block \(b)") }
            result = Self.decode(words, block: b)
            if case .bad = result { sched_yield(); continue }
            return result
        }
        return result
    }

    /// Checks the image against the console: every write up to `lastSeq` that is still the
    /// newest for its block is there (a later one may be too). With `final`, the guest has
    /// stopped and the console is complete: nothing newer than `lastSeq + 1` (one write may have
    /// completed without its SEQ line) may be on the disk. Returns one line per problem.
    public func check(lastSeq: Int, final: Bool) throws -> [String] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw HarnessError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var problems: [String] = []
        for b in 0..<blocks {
            let want = expectedSeq(block: b, last: lastSeq)
            let got = try read(fd, block: b, retries: final ? 0 : 100)
            if let p = judge(block: b, got, want: want, lastSeq: lastSeq, final: final) { problems.append(p) }
        }
        return problems
    }

    func judge(block b: Int, _ got: Block, want: Int?, lastSeq: Int, final: Bool) -> String? {
        let wanted = want.map { "seq \($0)" } ?? "nothing"
        switch got {
        case .bad(let why):
            return "block \(b): bad \(why) (expected \(wanted), last acknowledged \(lastSeq))"
        case .empty:
            return want == nil ? nil : "block \(b): empty, expected \(wanted): an acknowledged write is lost"
        case .written(let s):
            if s % blocks != b { return "block \(b): holds seq \(s), which belongs to block \(s % blocks)" }
            if let want, s < want { return "block \(b): holds seq \(s), expected \(wanted): an acknowledged write is lost" }
            if final && s != want && s != lastSeq + 1 {
                return "block \(b): holds seq \(s), expected \(wanted) (last acknowledged \(lastSeq))"
            }
            return nil
        }
    }

    /// The acknowledged writes (`SEQ s` lines) of a console that ran on `sides` in turn, each
    /// continuing the last exactly (a line may straddle a move); a last line cut short, as by
    /// SIGTERM, is not an acknowledgement.
    public static func acknowledged(_ sides: [String]) -> [Int] {
        var console = sides.joined()
        if let nl = console.lastIndex(of: "\n") { console = String(console[...nl]) } else { console = "" }
        return console.split(separator: "\n").compactMap { $0.hasPrefix("SEQ ") ? Int($0.dropFirst(4)) : nil }
    }
}
