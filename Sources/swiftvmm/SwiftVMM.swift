import ArgumentParser
import Foundation
import Glibc
import Machine
import Migration

@main
struct SwiftVMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftvmm",
        abstract: "A small KVM hypervisor that boots PVH and Linux kernels and live-migrates them.",
        discussion: """
        Boot a guest:     swiftvmm run --kernel guest.elf --memory 256M --cmdline "console=ttyS0"
        Move it:          swiftvmm recv --listen unix:/tmp/vm.mig   (on the target)
                          swiftvmm send /tmp/vm.sock --to unix:/tmp/vm.mig
        Save it:          swiftvmm save /tmp/vm.sock vm.snap     (the guest stops; --leave-running)
        Restore it:       swiftvmm restore vm.snap               (memory mapped from the file)
        Hand it over:     swiftvmm run --memory-backend memfd …, then on this host
                          swiftvmm send /tmp/vm.sock --to unix:/tmp/vm.mig --local
                          (RAM, disk and TAP descriptors move, not pages: how to upgrade swiftvmm
                          under a running guest)
        Exit status of run: the guest's debug-exit value v gives (v<<1)|1; 0 after a reset or
        clean stop; 2 for an error of the VMM or its input; 3 when the guest crashed.
        """,
        version: SwiftVMMVersion.string,
        subcommands: [Run.self, Recv.self, Send.self, Save.self, Restore.self, StatusCommand.self, Cancel.self, StopCommand.self, ContCommand.self,
                      QuitCommand.self, MirrorResync.self, Inspect.self, CPUFeatures.self, CPUBaseline.self],
        defaultSubcommand: nil)

    static func main() {
        // A peer that hangs up must surface as an EPIPE error, not kill the VMM.
        signal(SIGPIPE, SIG_IGN)
        StartupTrace.mark("main")
        runDirectly(CommandLine.arguments)
        SwiftVMM.main(nil)
    }

    /// The commands that start a guest, parsed without the whole command tree: building it
    /// reflects over every subcommand's options and costs several milliseconds of start-up.
    /// Help requests and anything that does not parse take the ordinary path (same messages).
    static let startsAGuest: [String: any ParsableCommand.Type] = ["run": Run.self, "recv": Recv.self, "restore": Restore.self]

    static func runDirectly(_ argv: [String]) {
        guard argv.count >= 2, let type = startsAGuest[argv[1]] else { return }
        let rest = Array(argv.dropFirst(2))
        let quick: (any ParsableCommand)? = argv[1] == "run" ? Run.quick(rest) : nil
        guard !rest.contains(where: { $0 == "-h" || $0 == "--help" || $0 == "-help" || $0 == "--version" }),
              var command = quick ?? (try? type.parseAsRoot(rest)) else { return }
        StartupTrace.mark("parsed")
        do {
            try command.run()
            Glibc.exit(0)
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            SwiftVMM.exit(withError: error)
        }
    }
}

/// Exit statuses of swiftvmm itself (odd values belong to the guest's debug-exit port).
enum Status {
    static let usageOrHostError: Int32 = 2
    static let guestCrashed: Int32 = 3
}

/// Prints `swiftvmm: error: message` on stderr and returns the exit code to throw.
func fail(_ message: String, code: Int32 = Status.usageOrHostError) -> ExitCode {
    FileHandle.standardError.write(Data("swiftvmm: error: \(message)\n".utf8))
    return ExitCode(code)
}

/// The one warning for a migration over a network without a key.
func warnUnauthenticated(_ endpoint: Endpoint) {
    note("warning: the migration stream on \(endpoint) is neither authenticated nor encrypted: anyone on the path can read or alter the guest's memory (use --key-file on both sides)")
}

func note(_ message: String) {
    FileHandle.standardError.write(Data("swiftvmm: \(message)\n".utf8))
}
