import ArgumentParser

/// `run`'s options read without ArgumentParser. Building its parser reflects over every option,
/// and the runtime's type lookups behind that cost ~2.5 ms of a ~9 ms start here; a command line
/// of plain `--name value` / `--name=value` options and flags is read directly instead. Anything
/// else — an unknown or repeated flag, a missing value, a value that looks like an option, a
/// number that does not parse, a request for help — returns nil, and ArgumentParser parses it (so
/// errors keep its words). The defaults are `Run`'s; tests check both parsers agree.
extension Run {
    /// Every option and flag `quick` reads (long names, without the dashes).
    static let quickOptions: Set<String> = [
        "kernel", "initrd", "cmdline", "memory", "cpus", "name", "cpu-model", "memory-backend", "disk", "net",
        "serial", "api-socket", "cpu-feature-deny", "kvm-device",
    ]
    static let quickFlags: Set<String> = ["no-acpi", "no-seccomp"]

    static func quick(_ args: [String]) -> Run? {
        var values: [String: [String]] = [:]
        var flags: Set<String> = []
        var i = 0
        while i < args.count {
            let arg = args[i]
            i += 1
            guard arg.hasPrefix("--") else { return nil }
            var key = String(arg.dropFirst(2))
            var value: String?
            if let eq = key.firstIndex(of: "=") {
                value = String(key[key.index(after: eq)...])
                key = String(key[..<eq])
            }
            if quickFlags.contains(key) {
                guard value == nil, flags.insert(key).inserted else { return nil }
                continue
            }
            guard quickOptions.contains(key) else { return nil }
            if value == nil {
                guard i < args.count, !args[i].hasPrefix("-") else { return nil }
                value = args[i]
                i += 1
            }
            guard let value else { return nil }
            values[key, default: []].append(value)
        }
        return make(values, flags)
    }

    private static func make(_ values: [String: [String]], _ flags: Set<String>) -> Run? {
        func last(_ key: String) -> String? { values[key]?.last }
        guard let kernel = last("kernel") else { return nil }
        var cpus = 1
        if let text = last("cpus") {
            guard let n = Int(text) else { return nil }
            cpus = n
        }
        var r = Run()
        r.kernel = kernel
        r.initrd = last("initrd")
        r.cmdline = last("cmdline") ?? ""
        r.memory = last("memory") ?? "256M"
        r.cpus = cpus
        r.name = last("name") ?? "swiftvmm"
        r.cpuModel = last("cpu-model") ?? "host"
        r.memoryBackend = last("memory-backend") ?? "anonymous"
        r.noACPI = flags.contains("no-acpi")
        var devices = DeviceOptions()
        devices.disk = values["disk"] ?? []
        devices.net = values["net"] ?? []
        r.devices = devices
        var console = ConsoleOptions()
        console.serial = last("serial") ?? "stdio"
        console.apiSocket = last("api-socket")
        r.console = console
        var hostCPU = HostCPUOptions()
        hostCPU.cpuFeatureDeny = values["cpu-feature-deny"] ?? []
        hostCPU.kvmDevice = last("kvm-device") ?? "/dev/kvm"
        r.hostCPU = hostCPU
        var confinement = ConfinementOptions()
        confinement.noSeccomp = flags.contains("no-seccomp")
        r.confinement = confinement
        return r
    }
}
