import ArgumentParser
import Foundation
import SoakSuite

/// `Tools/soak`: one guest moved back and forth between two swiftvmm processes, checked after
/// every hop.
struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "Tools/soak",
        abstract: "Live-migrate one busy guest back and forth between two swiftvmm processes, checking it after every hop.",
        discussion: """
        soak.elf dirties memory (memtouch's strict page check), writes its disk (blktest's block \
        format, each write acknowledged with a SEQ line) and answers pings, all at once. It boots \
        on side A and moves A → B → A … over TCP with a pre-shared key (--key-file), each hop to a \
        fresh `swiftvmm recv`; both sides share one multi-queue TAP in a private network namespace, \
        where ping runs throughout. After every hop: heartbeats and acknowledged writes continue on \
        the new side, no FAIL, pings are answered there, and the disk image holds every acknowledged \
        write. Prints a line per hop (downtime from send's --report) and a summary; exits 1 on any \
        failure. Every child, the namespace and the temporary files are removed on the way out. \
        The script Tools/soak builds what it needs first and takes two flags of its own: \
        --release (run .build/release/swiftvmm, built with -c release --static-swift-stdlib) and \
        --no-build (build only the guest images).
        """)

    @Option(help: "hops (moves) to make")
    var hops = 100
    @Option(help: "swiftvmm binary (default .build/debug/swiftvmm, else .build/release/swiftvmm)")
    var swiftvmm: String?
    @Option(help: "guest memory")
    var memory = "128M"
    @Option(help: "memtouch region inside the guest")
    var size = "16M"
    @Option(help: "disk blocks the guest writes in turn")
    var blocks = 64
    @Option(help: "send --downtime-ms (default: send's own)")
    var downtimeMs: Double?
    @Option(help: ArgumentHelp("keep each hop's send --report in DIR (hop-N.json)", valueName: "DIR"))
    var reports: String?
    @Option(help: ArgumentHelp("more of soak.elf's command line, e.g. \"write-ms=0 slice=64\" (GuestImages/README.md)", valueName: "ARGS"))
    var guestArgs = ""

    func validate() throws {
        guard hops >= 1 else { throw ValidationError("--hops must be at least 1") }
        guard blocks >= 1 else { throw ValidationError("--blocks must be at least 1") }
    }

    func run() throws {
        var o = SoakOptions()
        o.hops = hops
        o.swiftvmm = swiftvmm
        o.memory = memory
        o.size = size
        o.blocks = blocks
        o.downtimeMs = downtimeMs
        o.guestArgs = guestArgs
        if let reports {
            try FileManager.default.createDirectory(atPath: reports, withIntermediateDirectories: true)
            o.reports = reports
        }
        let status = SoakRun.main(o)
        if status != 0 { throw ExitCode(status) }
    }
}

Soak.main()
