import Foundation
import Glibc
import Testing
@testable import Machine
@testable import Migration

@Suite("disk copy in the stream")
struct DiskCopyTests {
    static func encode(_ bytes: [UInt8], offset: UInt64 = 4096, lz4: Bool = true) -> [UInt8] {
        bytes.withUnsafeBytes { DiskRun.encode(volume: 0, offset: offset, data: $0, lz4: lz4) }
    }

    @Test("runs of zeros travel as a header, text compresses, random bytes go raw; each decodes to its bytes")
    func runsRoundTrip() throws {
        let zeros = [UInt8](repeating: 0, count: 65536)
        let text = Array(String(repeating: "swiftvmm disk block ", count: 3277).utf8.prefix(65536))
        let random = (0..<65536).map { _ in UInt8.random(in: 0...255) }
        for (data, encoding) in [(zeros, DiskRun.Encoding.zeros), (text, .lz4), (random, .raw)] {
            let wire = Self.encode(data)
            let run = try DiskRun(decoding: wire)
            #expect(run.encoding == encoding)
            #expect(run.offset == 4096 && run.length == 65536)
            #expect(try run.bytes() == data)
        }
        #expect(Self.encode(zeros).count == DiskRun.headerSize)
    }

    @Test("a hostile run is refused: short header, unknown encoding, lengths that disagree, a bad LZ4 body, oversize")
    func hostileRunsRefused() throws {
        let good = Self.encode(Array(String(repeating: "abcd", count: 1024).utf8))
        var cases: [[UInt8]] = [Array(good.prefix(10))]
        var e = good; e[4] = 7; cases.append(e)
        var l = good; l[20] &+= 1; cases.append(l)
        var big = good; DiskRun.put(&big, UInt32(64 << 20), at: 16); cases.append(big)
        var zero = good; DiskRun.put(&zero, UInt32(0), at: 16); cases.append(zero)
        var raw = good; raw[4] = DiskRun.Encoding.raw.rawValue; cases.append(raw)
        for c in cases { #expect(throws: MigrationError.self) { _ = try DiskRun(decoding: c) } }
        var body = good
        for i in DiskRun.headerSize..<body.count { body[i] = 0xff }
        let run = try DiskRun(decoding: body)
        #expect(throws: MigrationError.self) { _ = try run.bytes() }
    }

    @Test("the target refuses a run outside its volume or for a volume it does not have, and writes a good one")
    func targetChecksRanges() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("diskcopy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("copy.img").path
        var plan = StorageCopyPlan()
        plan.volumes = [.init(name: "data", bytes: 1 << 20, allocated: 65536)]
        var disk = DiskConfig(path: path, volume: "data")
        disk.copy = true
        let target = try #require(try DiskCopyTarget.prepare(plan, disks: [disk]))
        let block = [UInt8](repeating: 0x5a, count: 65536)
        #expect(throws: MigrationError.self) { try target.apply(Self.encode(block, offset: (1 << 20) - 4096)) }
        #expect(throws: MigrationError.self) { try target.apply(Self.encode(block, offset: 100)) }
        var other = Self.encode(block)
        other[0] = 1
        #expect(throws: MigrationError.self) { try target.apply(other) }
        try target.apply(Self.encode(block, offset: 65536))
        #expect(!FileManager.default.fileExists(atPath: path), "the copy appeared at the volume's path before the commit")
        _ = try target.finish()
        #expect(!FileManager.default.fileExists(atPath: path), "the copy appeared at the volume's path before the commit")
        target.publish()
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(bytes.count == 1 << 20 && Array(bytes[65536..<131072]) == block && bytes[0] == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["copy.img"])
    }

    @Test("a copy the migration abandons leaves no file, and the file that was at the volume's path is untouched")
    func abandonedCopyLeavesNothing() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("diskcopy-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("copy.img").path
        let before = Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try before.write(to: URL(fileURLWithPath: path))
        var plan = StorageCopyPlan()
        plan.volumes = [.init(name: "data", bytes: 1 << 20, allocated: 65536)]
        var disk = DiskConfig(path: path, volume: "data")
        disk.copy = true
        let target = try #require(try DiskCopyTarget.prepare(plan, disks: [disk]))
        try target.apply(Self.encode([UInt8](repeating: 0x5a, count: 65536)))
        _ = try target.finish()
        target.discard()
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "the existing file changed")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["copy.img"], "a staged copy was left")
    }

    @Test("the pre-check names a copied volume without a copy disk, a copy disk the source does not copy, and too little space")
    func planProblems() {
        var plan = StorageCopyPlan()
        plan.volumes = [.init(name: "data", bytes: 1 << 40, allocated: 1 << 50)]
        var other = DiskConfig(path: "/tmp/other.img", volume: "other")
        other.copy = true
        let none = DiskCopyTarget.problems(plan, disks: [other], command: "recv")
        #expect(none.contains { $0.contains("volume 'data'") && $0.contains("copy") })
        #expect(none.contains { $0.contains("volume 'other'") && $0.contains("does not copy") })
        var data = DiskConfig(path: "/tmp/data.img", volume: "data")
        data.copy = true
        #expect(DiskCopyTarget.problems(plan, disks: [data], command: "recv").contains { $0.contains("free") })
    }

    @Test("the dirty log marks every 64 KiB block a write touches, only while logging, and collect clears it")
    func dirtyLog() {
        let log = DiskDirtyLog(bytes: 1 << 20)
        log.mark(offset: 0, length: 4096)
        log.start()
        #expect(log.collect().isEmpty)
        log.mark(offset: 65535, length: 2)
        log.mark(offset: (1 << 20) - 512, length: 512)
        #expect(log.collect() == [0, 1, 15])
        #expect(log.collect().isEmpty)
        log.stop()
        log.mark(offset: 0, length: 512)
        #expect(log.collect().isEmpty)
    }
}
