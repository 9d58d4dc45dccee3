import ArgumentParser
import Control
import Dispatch
import Foundation
import Glibc
import Machine

/// How long after the guest starts the start-up code is let go of (s).
let startupTextGrace = 0.25

/// Runs `vm` until it stops, turning SIGINT/SIGTERM into a clean stop, and returns the
/// process exit code for the reason it stopped.
func runUntilStopped(_ vm: VM, controller: MachineController? = nil, alreadyStarted: Bool = false) -> Int32 {
    Signals.shared.onTerminate { sig in vm.stop(.signal(sig)) }
    if !alreadyStarted { vm.start() }
    // The code only start-up ran need not stay mapped once the guest is under way: a moment
    // after the start (unmapping at once would make the guest's first exits fault their code
    // back in while it boots).
    if vm.waitForStop(timeout: startupTextGrace) == nil { StartupText.release() }
    let reason = vm.waitForStop()
    defer { controller?.finish() }
    if reason == .migrated || reason == .saved, let controller {
        // Let `send` (or any client that started the migration) learn the outcome first.
        controller.waitForMigrationClient(timeout: 10)
    }
    return exitCode(for: reason)
}

/// SIGINT and SIGTERM, routed to whatever should stop now (a receive, then the guest).
final class Signals: @unchecked Sendable {
    static let shared = Signals()
    private let lock = NSLock()
    private var handler: (@Sendable (Int32) -> Void)?
    private var sources: [DispatchSourceSignal] = []

    private init() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [self] in
                lock.lock()
                let h = handler
                lock.unlock()
                h?(sig)
            }
            s.resume()
            sources.append(s)
        }
    }

    func onTerminate(_ h: @escaping @Sendable (Int32) -> Void) {
        lock.lock(); handler = h; lock.unlock()
    }
}

/// Serves the control socket at `path` for `controller`.
func startControlServer(path: String, controller: MachineController) throws -> ControlServer {
    do { return try controller.serve(at: path) } catch { throw fail("\(error)") }
}

func exitCode(for reason: StopReason) -> Int32 {
    switch reason {
    case .guest(.debugExit(let v)): return Int32(truncatingIfNeeded: (v << 1) | 1) & 0xff
    case .guest(.reset): return 0
    case .guest(.powerOff):
        note("the guest powered off")
        return 0
    case .signal(let s):
        note("stopped by \(s == SIGINT ? "SIGINT" : "SIGTERM")")
        return 0
    case .migrated:
        note("the guest now runs on the migration target; exiting")
        return 0
    case .saved:
        note("the guest was saved to a snapshot; exiting")
        return 0
    case .tripleFault(let m):
        note("guest crashed: \(m)")
        return Status.guestCrashed
    case .internalError(let m):
        note("guest stopped: \(m)")
        return Status.guestCrashed
    }
}
