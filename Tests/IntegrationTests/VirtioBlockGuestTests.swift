import Foundation
import Glibc
import Harness
import Testing

/// blktest.elf's on-disk block format (GuestImages/README.md, "Block format"), checked on the host.
enum BlockFormat {
    static let magic: UInt64 = 0x314B_4C42_4D56_5753
    static let mulBlock: UInt64 = 0x9E37_79B9_7F4A_7C15
    static let mulSeq: UInt64 = 0xC2B2_AE3D_27D4_EB4F

    enum Verdict { case success(UInt64), failure(String) }

    /// The sequence number of block `b` in `bytes`, or why it is not a valid block.
    static func check(_ bytes: ArraySlice<UInt8>, block b: Int, bs: Int) -> Verdict {
        let n = bs / 8
        var w = [UInt64](repeating: 0, count: n)
        bytes.withUnsafeBytes { p in for i in 0..<n { w[i] = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) } }
        guard w[0] == magic else { return .failure("magic") }
        guard w[1] == UInt64(b) else { return .failure("blockno") }
        guard w[3] == UInt64(bs) else { return .failure("blocksize") }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for x in w[0..<(n - 1)] { h = (h ^ x) &* 0x100_0000_01B3 }
        guard w[n - 1] == h else { return .failure("checksum") }
        let base = (UInt64(b) &* mulBlock) ^ (w[2] &* mulSeq)
        for k in 4..<(n - 1) where w[k] != base ^ UInt64(k) { return .failure("pattern") }
        return .success(w[2])
    }

    /// Problems with an image where blocks 0..<blocks must hold `seq` and the rest be zero.
    static func verify(_ image: [UInt8], blocks: Int, bs: Int, seq: UInt64) -> [String] {
        var problems: [String] = []
        for b in 0..<blocks {
            switch check(image[(b * bs)..<((b + 1) * bs)], block: b, bs: bs) {
            case .success(let s) where s == seq: break
            case .success(let s): problems.append("block \(b): seq \(s), expected \(seq)")
            case .failure(let why): problems.append("block \(b): bad \(why)")
            }
        }
        if image[(blocks * bs)...].contains(where: { $0 != 0 }) { problems.append("bytes beyond block \(blocks - 1) were written") }
        return problems
    }

    /// Problems with an image written by `blktest loop` whose last acknowledged write was `last`.
    static func verifyLoop(_ image: [UInt8], blocks: Int, bs: Int, last: UInt64) -> [String] {
        var problems: [String] = []
        for b in 0..<blocks {
            let slice = image[(b * bs)..<((b + 1) * bs)]
            switch check(slice, block: b, bs: bs) {
            case .success(let s):
                if s % UInt64(blocks) != UInt64(b) || s > last + 1 { problems.append("block \(b): seq \(s)") }
            case .failure(let why):
                if why != "magic" || slice.contains(where: { $0 != 0 }) { problems.append("block \(b): bad \(why)") }
            }
        }
        let lb = Int(last % UInt64(blocks))
        if case .success(let s) = check(image[(lb * bs)..<((lb + 1) * bs)], block: lb, bs: bs), s >= last {} else {
            problems.append("last acknowledged seq \(last) is not on disk")
        }
        return problems
    }
}

/// A zero-filled image file in a temporary directory.
func makeImage(_ dir: URL, _ name: String, bytes: Int) throws -> String {
    let path = dir.appendingPathComponent(name).path
    guard FileManager.default.createFile(atPath: path, contents: nil), truncate(path, off_t(bytes)) == 0 else {
        throw CocoaError(.fileWriteUnknown)
    }
    return path
}

func fileBytes(_ path: String) -> [UInt8] { (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? [] }

/// blktest.elf, virtiofuzz.elf and bad disk options against `swiftvmm run`.
@Suite("virtio-blk with guests", .serialized)
struct VirtioBlockGuestTests {
    @Test("blktest writes 256 numbered 4 KiB blocks, reads them back, and the image holds exactly those blocks")
    func blktestWritesExactBlocks() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = try makeImage(dir, "disk.img", bytes: 8 << 20)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("blktest.elf"), "--memory", "64M",
                                 "--disk", "vol=data,path=\(image)", "--cmdline", "blocks=256 seq=7"], timeout: 60)
        #expect(r.stdout.contains("BLK capacity=16384 ro=0 flush=1"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("PASS blocks=256"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 1)
        let problems = BlockFormat.verify(fileBytes(image), blocks: 256, bs: 4096, seq: 7)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("blktest with 512-byte blocks and 1-block requests fills the disk exactly")
    func blktestSmallBlocks() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = try makeImage(dir, "small.img", bytes: 256 << 10)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("blktest.elf"), "--memory", "64M",
                                 "--disk", "path=\(image)", "--cmdline", "bs=512 chunk=1"], timeout: 60)
        #expect(r.stdout.contains("PASS blocks=512"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 1)
        let problems = BlockFormat.verify(fileBytes(image), blocks: 512, bs: 512, seq: 1)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("blktest loop with flushes: every acknowledged write is on disk when the guest ends")
    func blktestLoopAcknowledgedWritesDurable() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = try makeImage(dir, "loop.img", bytes: 1 << 20)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("blktest.elf"), "--memory", "64M",
                                 "--disk", "path=\(image)", "--cmdline", "loop count=1000 flush-every=100 blocks=64"],
                                timeout: 60)
        #expect(r.stdout.contains("PASS seq=1000"), "\(r.stdout.suffix(500))\n\(r.stderr)")
        let problems = BlockFormat.verifyLoop(fileBytes(image), blocks: 64, bs: 4096, last: 1000)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test("a read-only disk: the guest's write fails with IOERR and the image is unchanged")
    func readonlyDiskRefusesWrites() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = try makeImage(dir, "ro.img", bytes: 1 << 20)
        var pattern = [UInt8](repeating: 0, count: 1 << 20)
        for i in pattern.indices { pattern[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 9) }
        try Data(pattern).write(to: URL(fileURLWithPath: image))
        chmod(image, 0o444)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("blktest.elf"), "--memory", "64M",
                                 "--disk", "vol=golden,path=\(image),readonly", "--cmdline", "readonly-check"], timeout: 60)
        #expect(r.stdout.contains("ro=1"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("PASS readonly"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 1)
        #expect(fileBytes(image) == pattern)
    }

    @Test("virtiofuzz: hostile chains never bring the VMM down and a well-formed read works afterwards")
    func hostileQueueSurvived() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = try makeImage(dir, "fuzz.img", bytes: 1 << 20)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("virtiofuzz.elf"), "--memory", "64M",
                                 "--disk", "path=\(image)"], timeout: 60)
        #expect(r.stdout.contains("PASS fuzz"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 1)
        let cases = ["loop", "long-chain", "next-out-of-range", "head-out-of-range", "bad-addr", "huge-len", "ro-buffer"]
        for c in cases {
            let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("FUZZ \(c) ") }.map(String.init) ?? ""
            #expect(line.contains("used=1") || line.contains("needs_reset=1"), "\(c): \(line)")
        }
        // The chains that are sound apart from one bad buffer get an error status, not success.
        for c in ["bad-addr", "huge-len", "ro-buffer"] {
            let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("FUZZ \(c) ") } ?? ""
            #expect(line.contains("status=1"), "\(c): \(line)")
        }
        // Nothing was written to the disk by the hostile requests.
        #expect(!fileBytes(image).contains { $0 != 0 })
        // The VMM logs each problem at most once per line and never crashes.
        #expect(!r.stderr.contains("Fatal error"))
    }

    @Test("disk images that cannot back a disk are refused with one line naming the file")
    func badImagesRefused() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let odd = try makeImage(dir, "odd.img", bytes: 1000)
        let empty = try makeImage(dir, "empty.img", bytes: 0)
        for (path, words) in [(odd, "multiple of 512"), (empty, "multiple of 512"), (dir.appendingPathComponent("none.img").path, "cannot open")] {
            let r = try runSwiftVMM(["run", "--kernel", Paths.guest("blktest.elf"), "--disk", "path=\(path)"], timeout: 30)
            #expect(r.status != nil && r.status != 0 && r.status != 1, "\(path): status \(String(describing: r.status))")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(path) && r.stderr.contains(words), "\(r.stderr)")
        }
        // Two disks may not share a volume name.
        let a = try makeImage(dir, "a.img", bytes: 4096)
        let r = try runSwiftVMM(["run", "--kernel", Paths.guest("blktest.elf"), "--disk", "vol=x,path=\(a)", "--disk", "vol=x,path=\(a)"], timeout: 30)
        #expect(r.stderr.contains("'x'") && r.status != 1)
    }
}
