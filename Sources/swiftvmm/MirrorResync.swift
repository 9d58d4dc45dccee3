import ArgumentParser
import Control
import Foundation
import Machine

/// `mirror-resync`: copies to a VM's mirrors the blocks written since they fell out of sync.
struct MirrorResync: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mirror-resync",
        abstract: "Bring a VM's disk mirrors back in sync, copying only the blocks written since they fell out.",
        discussion: "Waits until every mirror (or --volume's) is in sync again; exits 2 with one line if a mirror still cannot be written.")

    @Argument(help: "The VM: its API socket path, or its --name.")
    var vm: String

    @Option(help: "Only this volume's mirror.")
    var volume: String?

    func run() throws {
        let reply: [String: Any]
        do {
            reply = try ControlClient(path: apiSocketPath(for: vm)).execute("x-swiftvmm-mirror-resync", volume.map { ["volume": $0] } ?? [:])
        } catch { throw fail("\(error)") }
        for m in reply["mirrors"] as? [[String: Any]] ?? [] {
            print("volume '\(m["volume"] as? String ?? "?")': mirror \(m["mirror"] as? String ?? "?") \(m["state"] as? String ?? "?"), \(ByteSize.format(UInt64(Progress.num(m["copied_bytes"])))) copied")
        }
    }

    /// `status`'s line for one mirror.
    static func line(_ m: [String: Any]) -> String {
        var s = "mirror:  volume '\(m["volume"] as? String ?? "?")' → \(m["mirror"] as? String ?? "?"): \(m["state"] as? String ?? "?")"
        let dirty = UInt64(Progress.num(m["dirty_bytes"]))
        if (m["state"] as? String) != "in-sync" { s += ", \(ByteSize.format(dirty)) to copy" }
        if let e = m["error"] as? String { s += " (\(e))" }
        return s
    }
}
