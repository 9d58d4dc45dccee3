import ArgumentParser
import Control

/// `stop`, `cont` and `quit`: the three verbs an operator uses on a running VM (QMP's names).
struct StopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Pause a VM's vCPUs (at a safe point); `cont` resumes them.")

    @Argument(help: "The VM: its API socket path, or its --name.")
    var vm: String

    func run() throws { try execute(vm, "stop", done: "paused") }
}

struct ContCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cont",
        abstract: "Resume a paused VM.",
        discussion: """
        After a migration whose outcome is in doubt (`status` says in-doubt: `go` was sent but the \
        target never confirmed it runs the guest, or the target loaded the guest but the source's \
        `go` never came), both sides keep a paused copy. `cont` on one side runs the guest there — \
        resume it on exactly one side, then `quit` the other.
        """)

    @Argument(help: "The VM: its API socket path, or its --name (a recv's --api-socket works too).")
    var vm: String

    func run() throws { try execute(vm, "cont", done: "running") }
}

struct QuitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quit", abstract: "Stop a VM (or a waiting recv) and let its swiftvmm exit.")

    @Argument(help: "The VM: its API socket path, or its --name.")
    var vm: String

    func run() throws { try execute(vm, "quit", done: "quit") }
}

struct MirrorResyncCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mirror-resync",
        abstract: "Bring every out-of-sync disk mirror (--disk path=P,mirror=Q) up to date: copies only the blocks written since it fell behind.")

    @Argument(help: "The VM: its API socket path, or its --name.")
    var vm: String

    func run() throws { try execute(vm, "x-swiftvmm-mirror-resync", done: "mirrors in sync") }
}

/// Sends `command` to `vm`'s control socket and prints `done`, or fails with the reply's reason.
private func execute(_ vm: String, _ command: String, done: String) throws {
    do { _ = try ControlClient(path: apiSocketPath(for: vm)).execute(command) } catch { throw fail("\(error)") }
    print(done)
}
