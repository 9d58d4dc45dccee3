import ArgumentParser
import Foundation
import Machine

/// `swiftvmm cpu-features`: what this host offers a guest.
struct CPUFeatures: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-features",
        abstract: "Print the CPU features this host offers a guest (KVM's after swiftvmm's policy), and which models it can run.",
        discussion: """
        With --json, the offer as a CPU model file: collect one from every host a guest may move \
        between and give them to `swiftvmm cpu-baseline` to get a model all of them offer.
        """)

    @Flag(help: "Print the offer as a CPU model (JSON), for cpu-baseline.")
    var json = false

    @Option(help: "The model's name in the JSON (default: this host's name).")
    var name: String?

    @Option(help: ArgumentHelp("Print a model's definition (JSON) instead of this host's offer.", valueName: "NAME|FILE"))
    var model: String?

    @Option(help: .hidden)
    var kvmDevice: String = "/dev/kvm"

    func run() throws {
        if let model {
            do { print(try CPUModel.parse(model).json) } catch { throw fail("\(error)") }
            return
        }
        let host: CPUModel
        do { host = try CPUModel.hostOffer(kvmDevice: kvmDevice, name: name ?? ProcessInfo.processInfo.hostName) } catch { throw fail("\(error)") }
        if json { print(host.json); return }
        let supported: [CPUIDEntry]
        do { supported = try HostCPU.supported(kvmDevice: kvmDevice) } catch { throw fail("\(error)") }
        print("feature registers (leaf.subleaf.register = bits offered):")
        for (key, bits) in (host.features ?? [:]).sorted(by: { $0.key < $1.key }) {
            print("  \(key) = 0x\(String(bits, radix: 16))")
        }
        print("XSAVE components: 0x\(String(host.xcr0, radix: 16)); max leaves 0x\(String(host.maxBasicLeaf, radix: 16)), 0x\(String(host.maxExtendedLeaf, radix: 16))")
        print("models:")
        for name in CPUModel.names {
            guard let m = CPUModel.named(name) else { continue }
            do { _ = try m.apply(to: supported); print("  \(name): offered") } catch { print("  \(name): not offered (lacks \(error.missing.joined(separator: ", ")))") }
        }
    }
}

/// `swiftvmm cpu-baseline A.json B.json …`: the largest model several hosts all offer.
struct CPUBaseline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-baseline",
        abstract: "Print the largest CPU model every given host offers (from their `cpu-features --json`), for run --cpu-model FILE.")

    @Argument(help: ArgumentHelp("CPU model files, one per host (or models from an earlier baseline).", valueName: "FILE"))
    var files: [String]

    @Option(help: "The model's name.")
    var name: String = "baseline"

    func run() throws {
        guard !files.isEmpty else { throw fail("cpu-baseline needs at least one model file") }
        var models: [CPUModel] = []
        for f in files {
            guard let data = FileManager.default.contents(atPath: f) else { throw fail("\(f): cannot read the file") }
            do { models.append(try CPUModel(json: data, source: f)) } catch { throw fail("\(error)") }
        }
        guard let base = CPUModel.baseline(models, name: name) else { throw fail("no model to combine") }
        print(base.json)
    }
}
