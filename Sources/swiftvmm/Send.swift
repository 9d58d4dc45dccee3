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

    @Option(help: .hidden)
    var streamVersion: Int?

    @Option(help: .hidden)
    var holdBeforeCommitMs: Int?

    func run() throws {
        let args = try arguments()
        let path = apiSocketPath(for: vm)
        let client: ControlClient
        let poller: ControlClient
        do {
            client = try ControlClient(path: path)
            poller = try ControlClient(path: path)
        } catch { throw fail("\(error)") }

        // Ctrl-C cancels; the guest keeps running on the source.
        let sig = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        signal(SIGINT, SIG_IGN)
        sig.setEventHandler {
            if let c = try? ControlClient(path: path) { _ = try? c.execute("migrate-cancel") }
        }
        sig.resume()
        defer { sig.cancel() }

        switch follow(migrate: client, args, poller: poller) {
        case .success(let r) where dryRun:
            let reasons = r["reasons"] as? [String] ?? []
            if r["eligible"] as? Bool == true && reasons.isEmpty { print("eligible"); return }
            print("not eligible:")
            for reason in reasons { print("  - \(reason)") }
            throw ExitCode(Status.usageOrHostError)
        case .success(let r):
            if let file = report {
                let data = (try? JSONSerialization.data(withJSONObject: r, options: [.prettyPrinted, .sortedKeys])) ?? Data()
                guard FileManager.default.createFile(atPath: file, contents: data) else { throw fail("cannot write --report \(file)") }
            }
            print(Progress.summary(r))
        case .failure(let e):
            throw fail("migration failed: \(e)")
        }
    }

    /// The options as the API's `migrate` arguments, checked.
    func arguments() throws -> [String: Any] {
        let endpoint: Endpoint
        do { endpoint = try Endpoint.parse(to) } catch { throw fail("--to \(error)") }
        if keyFile == nil && !endpoint.isLocal { warnUnauthenticated(endpoint) }
        guard ["lz4", "none"].contains(compress) else { throw fail("--compress must be lz4 or none") }
        guard ["on", "off"].contains(autoConverge) else { throw fail("--auto-converge must be on or off") }
        guard downtimeMs > 0 else { throw fail("--downtime-ms must be positive") }
        var args: [String: Any] = ["uri": to, "downtime-ms": downtimeMs, "compress": compress,
                                   "auto-converge": autoConverge == "on"]
        if let b = maxBandwidth {
            guard let rate = ByteSize.parse(b), rate > 0 else { throw fail("--max-bandwidth '\(b)' is not a rate like 100M") }
            args["max-bandwidth"] = Double(rate)
        }
        if let t = maxTime {
            guard t > 0 else { throw fail("--max-time must be positive") }
            args["max-time"] = t
        }
        if let k = keyFile {
            do { args["key"] = try Auth.loadKey(k).hexString } catch { throw fail("\(error)") }
        }
        guard timeout >= 0 else { throw fail("--timeout must be 0 (never) or more") }
        args["timeout"] = timeout
        if dryRun { args["dry-run"] = true }
        if let v = streamVersion { args["stream-version"] = v }
        if let v = holdBeforeCommitMs { args["hold-before-commit-ms"] = v }
        return args
    }

    /// Runs `migrate` on `client` in the background and, on a terminal, redraws a progress line
    /// from `poller` until it ends.
    func follow(migrate client: ControlClient, _ args: [String: Any], poller: ControlClient) -> Result<[String: Any], Error> {
        let done = NSCondition()
        nonisolated(unsafe) var result: Result<[String: Any], Error>?
        let request = Unchecked(args)
        let worker = Thread {
            let r: Result<[String: Any], Error>
            do { r = .success(try client.execute("migrate", request.value)) } catch { r = .failure(error) }
            done.lock(); result = r; done.broadcast(); done.unlock()
        }
        worker.start()
        let tty = isatty(2) != 0
        var lastLine = ""
        done.lock()
        while result == nil {
            _ = done.wait(until: Date().addingTimeInterval(0.2))
            if result != nil { break }
            done.unlock()
            if tty, let p = try? poller.execute("query-migrate") {
                let line = Progress.line(p)
                if line != lastLine {
                    FileHandle.standardError.write(Data("\r\u{1b}[K\(line)".utf8))
                    lastLine = line
                }
            }
            done.lock()
        }
        let final = result ?? .failure(ControlError("the migration ended without a result"))
        done.unlock()
        if tty && !lastLine.isEmpty { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) }
        return final
    }
}

/// Moves a value the compiler cannot prove Sendable to exactly one other thread.
struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
