import Foundation
import Testing
import Harness

/// swiftvmm serves raw images only: a qcow2 image given to run, recv or restore is refused in
/// one line naming the file and the format, before any guest runs.
@Suite("only raw disk images are accepted", .serialized)
struct RawImageOnlyTests {
    /// A real qcow2 image from qemu-img when it is installed, otherwise a qcow2 header.
    static func qcow2(in dir: URL) throws -> String {
        let path = dir.appendingPathComponent("disk.qcow2").path
        if sh("qemu-img create -q -f qcow2 '\(path)' 8M").status != 0 {
            let header: [UInt8] = [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]
            try Data(header + [UInt8](repeating: 0, count: 65536 - header.count)).write(to: URL(fileURLWithPath: path))
        }
        return path
    }

    static func expectRefused(_ args: [String], naming path: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try runSwiftVMM(args, timeout: 60)
        #expect(r.status == 2, "status \(String(describing: r.status)): \(r.stderr)", sourceLocation: sourceLocation)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stderr.contains(path) && r.stderr.contains("qcow2") && r.stderr.contains("raw"),
                "stderr: \(r.stderr)", sourceLocation: sourceLocation)
        #expect(r.stdout.isEmpty, "guest output: \(r.stdout)", sourceLocation: sourceLocation)
    }

    @Test("run, recv and restore each refuse a qcow2 --disk in one line and exit 2")
    func qcow2Refused() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = try Self.qcow2(in: dir)
        try Self.expectRefused(["run", "--kernel", Paths.guest("hello.elf"), "--disk", "path=\(image)"], naming: image)
        let socket = dir.appendingPathComponent("m.sock").path
        try Self.expectRefused(["recv", "--listen", "unix:\(socket)", "--disk", "vol=v,path=\(image)"], naming: image)
        #expect(!FileManager.default.fileExists(atPath: socket), "recv listened before refusing")
        try Self.expectRefused(["restore", dir.appendingPathComponent("none.snap").path, "--disk", "vol=v,path=\(image)"],
                               naming: image)
    }
}
