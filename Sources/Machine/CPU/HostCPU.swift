import KVM

/// One CPUID leaf (re-exported so that layers above `Machine` need not import `KVM`).
public typealias CPUIDEntry = KVM.CPUIDEntry

/// What this host's CPU can offer a guest, through KVM and swiftvmm's policy.
public enum HostCPU {
    /// The CPUID leaves a guest may see on this host: KVM's supported table — or `replacing`,
    /// a table from elsewhere (a migrating guest's own) — minus the `deny`ed feature bits.
    static func offer(_ hv: Hypervisor, deny: [String], replacing table: [CPUIDEntry]? = nil) throws(VMError) -> [CPUIDEntry] {
        var base: [CPUIDEntry]
        if let table { base = table } else {
            do { base = try hv.supportedCPUID() } catch { throw .kvm(error) }
        }
        guard !deny.isEmpty else { return base }
        do { base = try CPUIDPolicy.deny(deny, in: base) } catch { throw .config(error.description) }
        return base
    }

    /// The CPUID table vCPU 0 of a `vcpuCount`-vCPU guest would get on this host (opens the
    /// KVM device `kvmDevice`): what a migration target compares an incoming guest with.
    public static func offer(kvmDevice: String, deny: [String], vcpuCount: Int) throws(VMError) -> [CPUIDEntry] {
        let hv: Hypervisor
        do { hv = try Hypervisor(path: kvmDevice) } catch { throw .kvm(error) }
        let base = try offer(hv, deny: deny)
        return CPUIDPolicy.table(supported: base, vcpuID: 0, vcpuCount: vcpuCount)
    }
}
