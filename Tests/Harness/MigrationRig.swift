import Foundation
import Glibc

/// A source `swiftvmm run` with an API socket, and helpers to receive and send it elsewhere:
/// what the migration tests and the migration benchmarks share.
public final class MigrationRig: @unchecked Sendable {
    /// Where the rig's sockets and files go.
    public let dir: URL
    /// The swiftvmm binary the rig starts.
    public let swiftvmm: String
    public var counter = 0
    /// Put before the names of the children the rig starts ("source", "target", "send").
    public var namePrefix = ""
    private let ownsDirectory: Bool

    /// A rig in a fresh temporary directory (removed with the rig), or in `directory` (kept).
    public init(swiftvmm: String = Paths.swiftvmm, directory: URL? = nil) throws {
        self.swiftvmm = swiftvmm
        if let directory {
            dir = directory
            ownsDirectory = false
        } else {
            dir = try Paths.tempDirectory()
            ownsDirectory = true
        }
    }

    deinit {
        if ownsDirectory {
            try? FileManager.default.removeItem(at: dir)
            Registry.shared.untrack(path: dir.path)
        }
    }

    public func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    public func nextSocket(_ prefix: String) -> String {
        counter += 1
        return path("\(prefix)\(counter).sock")
    }

    /// Boots `kernel` (a guest image name, or a path) with an API socket; returns the child
    /// once the socket is there, and the socket's path.
    public func source(_ kernel: String, cmdline: String, memory: String = "256M", cpus: Int = 1,
                       extra: [String] = [], name: String = "guest",
                       environment: [String: String] = [:]) throws -> (Child, String) {
        let api = nextSocket("api")
        let image = kernel.contains("/") ? kernel : Paths.guest(kernel)
        let c = try Child(swiftvmm, ["run", "--kernel", image, "--memory", memory, "--cpus", "\(cpus)",
                                     "--cmdline", cmdline, "--api-socket", api, "--name", name] + extra,
                          name: namePrefix + "source", environment: environment)
        try waitForSocket(api, child: c)
        return (c, api)
    }

    /// Starts `swiftvmm recv` listening on `listen`, with its own API socket; returns once it
    /// says it is waiting for a migration.
    public func target(listen: String, extra: [String] = [], environment: [String: String] = [:]) throws -> (Child, String) {
        let api = nextSocket("tapi")
        let c = try Child(swiftvmm, ["recv", "--listen", listen, "--api-socket", api] + extra, name: namePrefix + "target",
                          environment: environment)
        guard c.waitForStderr("waiting for a migration", timeout: 30) else {
            throw HarnessError("recv never said it was waiting for a migration\n\(c.transcript)")
        }
        return (c, api)
    }

    /// Starts `swiftvmm send` of the VM behind `api` to `to`.
    public func startSend(_ api: String, to: String, extra: [String] = []) throws -> Child {
        try Child(swiftvmm, ["send", api, "--to", to] + extra, name: namePrefix + "send")
    }

    /// Runs `swiftvmm send` to completion.
    public func send(_ api: String, to: String, extra: [String] = [], timeout: Double = 120) throws -> (status: Int32?, stdout: String, stderr: String) {
        let c = try startSend(api, to: to, extra: extra)
        let s = c.wait(timeout: timeout)
        return (s, c.stdout, c.stderr)
    }

    /// Waits until `path` exists (an event, not a poll); throws if `child` ends first or time runs out.
    public func waitForSocket(_ path: String, child: Child, timeout: Double = 30) throws {
        do { try Paths.waitFor(path, timeout: timeout, child: child) } catch {
            throw HarnessError("API socket never appeared: \(error)\n\(child.transcript)")
        }
    }

    /// Sends one control command with the CLI's own client (`status --json`).
    public func status(_ api: String) throws -> [String: Any] {
        let c = try Child(swiftvmm, ["status", api, "--json"], name: "status")
        guard c.wait(timeout: 30) == 0,
              let o = try JSONSerialization.jsonObject(with: Data(c.stdout.utf8)) as? [String: Any] else {
            return [:]
        }
        return o
    }

    /// A free TCP port on loopback.
    public static func freePort() -> Int {
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

/// Sends one QMP command to an API socket (after negotiating capabilities) and returns the raw
/// reply line ("" when the socket cannot be reached).
public func control(_ api: String, _ command: String) -> String {
    guard let c = try? JSONLinesClient.qmp(path: api, timeout: 10),
          let reply = try? c.request(.object(["execute": .string(command)])) else { return "" }
    return reply.line
}
