import ArgumentParser
import Control
import Foundation
import Machine

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show a VM's state and the progress of its migration (source or target).")

    @Argument(help: "The VM: its API socket path, or its --name.")
    var vm: String

    @Flag(help: "Print the raw JSON.")
    var json = false

    func run() throws {
        let s: [String: Any]
        do { s = try ControlClient(path: apiSocketPath(for: vm)).execute("x-swiftvmm-query-status") } catch { throw fail("\(error)") }
        if json {
            let d = (try? JSONSerialization.data(withJSONObject: s, options: [.sortedKeys, .prettyPrinted])) ?? Data()
            print(String(decoding: d, as: UTF8.self))
            return
        }
        print("name:    \(s["name"] as? String ?? "?")")
        print("status:  \(s["status"] as? String ?? "?")")
        if let m = s["memory_bytes"] { print("memory:  \(ByteSize.format(UInt64(Progress.num(m))))") }
        if let c = s["cpus"] { print("vcpus:   \(Int(Progress.num(c)))" + ((s["cpu_model"] as? String).map { " (CPU model \($0))" } ?? "")) }
        for m in s["mirrors"] as? [[String: Any]] ?? [] { print(MirrorResync.line(m)) }
        if let m = s["migration"] as? [String: Any] {
            print("migration (\(s["role"] as? String ?? "?")): \(Progress.line(m))")
            print(String(format: "  peer %@, %.1f MB on the wire, elapsed %.1f s", (m["peer"] as? String ?? "") as NSString,
                         Progress.num(m["bytes_on_wire"]) / 1e6, Progress.num(m["elapsed_s"])))
            if let e = m["error"] as? String { print("  error: \(e)") }
            if let w = m["warning"] as? String { print("  warning: \(w)") }
        }
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cancel a VM's migration before it commits (on the source or on the target).")

    @Argument(help: "The VM: its API socket path, or its --name (a recv's --api-socket works too).")
    var vm: String

    func run() throws {
        do { _ = try ControlClient(path: apiSocketPath(for: vm)).execute("migrate_cancel") } catch { throw fail("\(error)") }
        print("cancel requested")
    }
}
