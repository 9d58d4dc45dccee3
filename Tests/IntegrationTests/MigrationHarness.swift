import Foundation
import Glibc
import Testing

/// A source `swiftvmm run` with an API socket, and helpers to receive and send it elsewhere.
final class MigrationRig: @unchecked Sendable {
    let dir: URL
    var counter = 0

    init() throws { dir = try Paths.tempDirectory() }
    deinit { try? FileManager.default.removeItem(at: dir) }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    func nextSocket(_ prefix: String) -> String {
        counter += 1
        return path("\(prefix)\(counter).sock")
    }

    /// Boots `kernel` with an API socket; returns the child and its socket path.
    func source(_ kernel: String, cmdline: String, memory: String = "256M", cpus: Int = 1,
                extra: [String] = [], name: String = "guest") throws -> (Child, String) {
        let api = nextSocket("api")
        let c = try Child.swiftvmm(["run", "--kernel", Paths.guest(kernel), "--memory", memory, "--cpus", "\(cpus)",
                                    "--cmdline", cmdline, "--api-socket", api, "--name", name] + extra, name: "source")
        try waitForSocket(api, child: c)
        return (c, api)
    }

    /// Starts `swiftvmm recv` listening on `listen`, with its own API socket.
    func target(listen: String, extra: [String] = []) throws -> (Child, String) {
        let api = nextSocket("tapi")
        let c = try Child.swiftvmm(["recv", "--listen", listen, "--api-socket", api] + extra, name: "target")
        #expect(c.waitForStderr("waiting for a migration", timeout: 30), "\(c.transcript)")
        return (c, api)
    }

    /// Runs `swiftvmm send` to completion.
    func send(_ api: String, to: String, extra: [String] = [], timeout: Double = 120) throws -> (status: Int32?, stdout: String, stderr: String) {
        try runSwiftVMM(["send", api, "--to", to] + extra, timeout: timeout)
    }

    func waitForSocket(_ path: String, child: Child, timeout: Double = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !FileManager.default.fileExists(atPath: path) && Date() < deadline && child.process.isRunning {
            usleep(20_000)
        }
        try #require(FileManager.default.fileExists(atPath: path), "API socket never appeared\n\(child.transcript)")
    }

    /// Sends one control command with the CLI's own client (`status --json`).
    func status(_ api: String) throws -> [String: Any] {
        let r = try runSwiftVMM(["status", api, "--json"], timeout: 30)
        guard r.status == 0, let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            return [:]
        }
        return o
    }

    /// A free TCP port on loopback.
    static func freePort() -> Int {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(s) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// Runs a shell command, returning its status and output.
@discardableResult
func sh(_ command: String) -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    do { try p.run() } catch { return (127, "\(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
