import ArgumentParser
import Foundation
import Testing
@testable import swiftvmm

/// `run`'s quick option reader against ArgumentParser: the same values for every command line
/// it takes, and nil (ArgumentParser's turn) for everything else.
@Suite("run's quick option reader")
struct RunQuickParseTests {
    /// Every value of a parsed `run`, in one comparable string.
    static func summary(_ r: Run) -> String {
        [r.kernel, r.initrd ?? "nil", r.cmdline, r.memory, "\(r.cpus)", r.name, r.cpuModel, r.memoryBackend, "\(r.noACPI)",
         r.devices.disk.joined(separator: "|"), r.devices.net.joined(separator: "|"), r.console.serial,
         r.console.apiSocket ?? "nil", r.hostCPU.cpuFeatureDeny.joined(separator: "|"), r.hostCPU.kvmDevice,
         "\(r.confinement.noSeccomp)"].joined(separator: " ; ")
    }

    static let agreeing: [[String]] = [
        ["--kernel", "k.elf"],
        ["--kernel=k.elf", "--memory=1G", "--cpus=2"],
        ["--kernel", "/boot/vmlinuz", "--initrd", "/boot/initrd", "--cmdline", "console=ttyS0 quiet", "--memory", "2G",
         "--cpus", "4", "--name", "vm1", "--cpu-model", "x86-64-v2", "--memory-backend", "memfd", "--no-acpi",
         "--disk", "vol=a,path=/a.img", "--disk", "path=/b.img,readonly", "--net", "tap=tap0", "--serial", "file:/tmp/s",
         "--api-socket", "/tmp/vm.sock", "--cpu-feature-deny", "0x7.0.ebx:5", "--cpu-feature-deny", "0x1.0.ecx:13",
         "--kvm-device", "/dev/kvm", "--no-seccomp"],
        ["--memory", "512M", "--kernel", "a", "--memory", "1G", "--kernel", "b"],
        ["--cmdline", "", "--kernel", "k"],
        ["--cmdline=a=b c=d", "--kernel", "k"],
    ]

    @Test("takes the same values as ArgumentParser, defaults included", arguments: agreeing)
    func agreesWithArgumentParser(_ args: [String]) throws {
        let quick = try #require(Run.quick(args))
        let parsed = try Run.parse(args)
        #expect(Self.summary(quick) == Self.summary(parsed))
    }

    static let declined: [[String]] = [
        [], ["--memory", "1G"], ["k.elf"], ["--kernel"], ["--kernel", "--memory", "1G"], ["--kernel", "k", "--help"],
        ["--kernel", "k", "-h"], ["--kernel", "k", "--version"], ["--kernel", "k", "--bogus", "x"],
        ["--kernel", "k", "--cpus", "two"], ["--kernel", "k", "--no-acpi", "--no-acpi"], ["--kernel", "k", "--no-acpi=yes"],
        ["--kernel", "k", "extra"],
    ]

    @Test("leaves anything unusual to ArgumentParser", arguments: declined)
    func declinesTheUnusual(_ args: [String]) {
        #expect(Run.quick(args) == nil)
    }

    @Test("knows every option and flag run has, hidden ones included")
    func knowsEveryOption() throws {
        let json = try #require(try JSONSerialization.jsonObject(with: Data(Run._dumpHelp().utf8)) as? [String: Any])
        let command = try #require(json["command"] as? [String: Any])
        let arguments = try #require(command["arguments"] as? [[String: Any]])
        var names: Set<String> = []
        for a in arguments {
            for n in (a["names"] as? [[String: Any]]) ?? [] where n["kind"] as? String == "long" {
                if let name = n["name"] as? String { names.insert(name) }
            }
        }
        names.subtract(["help", "version"])
        #expect(!names.isEmpty)
        #expect(names == Run.quickOptions.union(Run.quickFlags))
    }
}
