import ArgumentParser
import Control
import Dispatch
import Foundation
import Glibc
import Machine
import Migration

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Live-migrate a running guest to a `swiftvmm recv`.",
        discussion: """
        VM is the API socket of a running `swiftvmm run` (or its --name). Exits 0 only once the \
        target confirmed it runs the guest; then the source VMM has stopped and exits. On any \
        failure or Ctrl-C before that, the guest keeps running on the source.
        """)

    @Argument(help: "The VM: its API socket path, or its --name.")
    var vm: String

    @Option(help: ArgumentHelp("The receiving swiftvmm.", valueName: "tcp:HOST:PORT|unix:PATH"))
    var to: String

    @Option(help: "Largest acceptable pause of the guest, in milliseconds.")
    var downtimeMs: Double = 50

    @Option(help: ArgumentHelp("Cap on the pre-copy rate, e.g. 100M (bytes per second).", valueName: "RATE"))
    var maxBandwidth: String?

    @Option(help: ArgumentHelp("Page compression.", valueName: "lz4|none"))
    var compress: String = "lz4"

    @Option(help: ArgumentHelp("Give up after this many seconds (the guest stays here).", valueName: "S"))
    var maxTime: Double?

    @Option(help: ArgumentHelp("Throttle the vCPUs when the guest dirties memory faster than the link carries it.", valueName: "on|off"))
    var autoConverge: String = "on"

    @Option(help: ArgumentHelp("Write the migration's figures as JSON.", valueName: "FILE"))
    var report: String?

    @Option(help: ArgumentHelp("Pre-shared key (the same file recv uses): authenticates both ends and seals the whole stream (AES-256-GCM).", valueName: "FILE"))
    var keyFile: String?

    @Option(help: ArgumentHelp("Give up when the target makes no progress for this many seconds (0: never); the guest keeps running here.", valueName: "S"))
    var timeout: Double = 30

    @Flag(help: "Only check that the guest could move: connect, authenticate, have the target run every pre-check and build the machine paused, then tear it down. Prints `eligible` (exit 0) or every reason it is not (exit 2); the guest never pauses and recv goes on waiting.")
    var dryRun = false

    @Flag(help: "Copy the guest's disks in the stream, for a target without shared storage (its recv gives each volume a --disk vol=NAME,path=P,copy).")
    var copyStorage = false

    @Flag(help: "With --copy-storage: hash every image on both sides at the pause and commit only when they match (adds the hashing time to the downtime).")
    var verifyStorage = false

    @Flag(help: "Local hand-over to a recv on this host (--to unix:PATH; the guest must run with --memory-backend memfd): guest RAM, disk and TAP descriptors pass over the socket instead of copied pages, and only vCPU and device state cross — a pause of milliseconds whatever the memory size. How a swiftvmm binary is replaced under a running guest.")
    var local = false

    @Option(help: ArgumentHelp("Connections the guest's pages travel on, 1–\(MachineDescription.maxChannels) (default: 1 on a UNIX socket, 4 over TCP). Each has a thread of its own that scans, compresses and sends its share of every round (QEMU's multifd channels); the last pages and the machine state follow on the first, after every page of the rounds before.", valueName: "N"))
    var connections: Int?

    @Option(help: .hidden)
    var streamVersion: Int?

    @Option(help: .hidden)
    var holdBeforeCommitMs: Int?

    func run() throws {
        let parameters = try self.parameters()
        let path = apiSocketPath(for: vm)
        let client: ControlClient
        do { client = try ControlClient(path: path) } catch { throw fail("\(error)") }

        // Ctrl-C cancels; the guest keeps running on the source.
        let sig = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        signal(SIGINT, SIG_IGN)
        sig.setEventHandler {
            if let c = try? ControlClient(path: path) { _ = try? c.execute("migrate_cancel") }
        }
        sig.resume()
        defer { sig.cancel() }

        let info: [String: Any]
        do {
            _ = try client.execute("migrate-set-parameters", parameters)
            if dryRun { return try printVerdict(client.execute("x-swiftvmm-migrate-dry-run", ["uri": to])) }
            _ = try client.execute("migrate", ["uri": to])
            info = try follow(client)
        } catch let e as ExitCode { throw e } catch { throw fail("migration failed: \(error)") }
        guard info["status"] as? String == "completed", let r = info["x-swiftvmm-report"] as? [String: Any] else {
            throw fail("migration failed: \(info["error-desc"] as? String ?? "status \(info["status"] as? String ?? "unknown")")")
        }
        if let file = report {
            let data = (try? JSONSerialization.data(withJSONObject: r, options: [.prettyPrinted, .sortedKeys])) ?? Data()
            guard FileManager.default.createFile(atPath: file, contents: data) else { throw fail("cannot write --report \(file)") }
        }
        print(Progress.summary(r))
    }

    /// The options as the monitor's `migrate-set-parameters` arguments, checked — every
    /// parameter, so that nothing an earlier migration set carries over.
    func parameters() throws -> [String: Any] {
        let endpoint: Endpoint
        do { endpoint = try Endpoint.parse(to) } catch { throw fail("--to \(error)") }
        if keyFile == nil && !endpoint.isLocal { warnUnauthenticated(endpoint) }
        if local, case .tcp = endpoint { throw fail("--local needs --to unix:PATH: descriptors pass only over a UNIX socket") }
        guard ["lz4", "none"].contains(compress) else { throw fail("--compress must be lz4 or none") }
        guard ["on", "off"].contains(autoConverge) else { throw fail("--auto-converge must be on or off") }
        guard downtimeMs > 0 else { throw fail("--downtime-ms must be positive") }
        var args: [String: Any] = ["downtime-limit": downtimeMs, "max-bandwidth": 0,
                                   "x-swiftvmm-compress": compress, "x-swiftvmm-auto-converge": autoConverge == "on",
                                   "x-swiftvmm-max-time": 0, "x-swiftvmm-key": "",
                                   "x-swiftvmm-stream-version": streamVersion ?? Int(Wire.streamVersion),
                                   "x-swiftvmm-hold-before-commit-ms": holdBeforeCommitMs ?? 0,
                                   "x-swiftvmm-copy-storage": copyStorage, "x-swiftvmm-verify-storage": verifyStorage,
                                   "x-swiftvmm-local": local, "multifd-channels": connections ?? 0]
        if verifyStorage && !copyStorage { throw fail("--verify-storage needs --copy-storage") }
        if local && copyStorage { throw fail("--local hands the disks over as they are: it does not combine with --copy-storage") }
        if let n = connections, n < 1 || n > MachineDescription.maxChannels {
            throw fail("--connections must be 1 to \(MachineDescription.maxChannels)")
        }
        if local && (connections ?? 1) > 1 { throw fail("--local moves no pages: it does not combine with --connections") }
        if let b = maxBandwidth {
            guard let rate = ByteSize.parse(b), rate > 0 else { throw fail("--max-bandwidth '\(b)' is not a rate like 100M") }
            args["max-bandwidth"] = rate
        }
        if let t = maxTime {
            guard t > 0 else { throw fail("--max-time must be positive") }
            args["x-swiftvmm-max-time"] = t
        }
        if let k = keyFile {
            do { args["x-swiftvmm-key"] = try Auth.loadKey(k).hexString } catch { throw fail("\(error)") }
        }
        guard timeout >= 0 else { throw fail("--timeout must be 0 (never) or more") }
        args["x-swiftvmm-timeout"] = timeout
        return args
    }

    /// Prints a dry run's verdict: `eligible`, or every reason not (then exit 2).
    func printVerdict(_ r: [String: Any]) throws {
        let reasons = r["reasons"] as? [String] ?? []
        if r["eligible"] as? Bool == true && reasons.isEmpty { print("eligible"); return }
        print("not eligible:")
        for reason in reasons { print("  - \(reason)") }
        throw ExitCode(Status.usageOrHostError)
    }

    /// Follows the migration through its MIGRATION events until it ends and returns the final
    /// `query-migrate`; on a terminal, redraws a progress line meanwhile.
    func follow(_ client: ControlClient) throws -> [String: Any] {
        let tty = isatty(2) != 0
        var lastLine = ""
        defer { if tty && !lastLine.isEmpty { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) } }
        while true {
            if let e = try client.nextEvent(timeout: 0.2) {
                guard e["event"] as? String == "MIGRATION",
                      let status = (e["data"] as? [String: Any])?["status"] as? String,
                      ["completed", "failed", "cancelled"].contains(status) else { continue }
                return try client.execute("query-migrate")
            }
            guard tty else { continue }
            let info = try client.execute("query-migrate")
            if let p = info["x-swiftvmm-progress"] as? [String: Any] {
                let line = Progress.line(p)
                if line != lastLine {
                    FileHandle.standardError.write(Data("\r\u{1b}[K\(line)".utf8))
                    lastLine = line
                }
            }
        }
    }
}
