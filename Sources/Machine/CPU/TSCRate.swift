import Foundation
import KVM
import Synchronization

/// The guest TSC's rate across hosts. A guest calibrates its clock once, at boot; on a host whose
/// TSC runs at another rate its clock would run fast or slow from the hand-off on. Equal rates
/// (within Linux's own 250 ppm tolerance) need nothing; otherwise KVM can scale the guest's TSC
/// (`KVM_CAP_TSC_CONTROL`, `KVM_SET_TSC_KHZ`) or the target must refuse the guest.
public enum TSCRate {
    public static let tolerancePPM: UInt64 = 250
    /// This host's TSC rate per KVM device, probed once per process (a probe VM costs
    /// milliseconds to create and destroy, and a restore would otherwise make two).
    private static let probed = Mutex<[String: (khz: UInt32, scaling: Bool)]>([:])

    /// What a target does with a guest whose TSC runs at `guest` kHz.
    public enum Decision: Equatable, Sendable {
        /// The rates agree (or the guest's rate is unknown).
        case same
        /// KVM here scales the guest's TSC to its own rate.
        case scale(guestKHz: UInt32, hostKHz: UInt32)
        /// They differ and KVM here cannot scale.
        case mismatch(guestKHz: UInt32, hostKHz: UInt32)
    }

    /// This host's TSC rate and whether KVM can scale a guest's. Tests override both with
    /// SWIFTVMM_TEST_TSC_KHZ and SWIFTVMM_TEST_TSC_SCALING (0 or 1).
    public static func host(kvmDevice: String) throws(VMError) -> (khz: UInt32, scaling: Bool) {
        var host = try probe(kvmDevice)
        let env = ProcessInfo.processInfo.environment
        if let s = env["SWIFTVMM_TEST_TSC_SCALING"] { host.scaling = s == "1" }
        if let k = env["SWIFTVMM_TEST_TSC_KHZ"].flatMap(UInt32.init) { host.khz = k }
        return host
    }

    private static func probe(_ kvmDevice: String) throws(VMError) -> (khz: UInt32, scaling: Bool) {
        if let known = probed.withLock({ $0[kvmDevice] }) { return known }
        do {
            let hv = try Hypervisor(path: kvmDevice)
            let vcpu = try hv.createVM().createVCPU(id: 0)
            let found = (khz: vcpu.tscKHz(), scaling: hv.check(.tscControl) > 0)
            probed.withLock { $0[kvmDevice] = found }
            return found
        } catch { throw .kvm(error) }
    }

    public static func agree(_ a: UInt32, _ b: UInt32) -> Bool {
        let diff = UInt64(a > b ? a - b : b - a)
        return diff * 1_000_000 <= UInt64(max(a, b)) * tolerancePPM
    }

    public static func decide(guestKHz: UInt32, kvmDevice: String) throws(VMError) -> Decision {
        guard guestKHz != 0 else { return .same }
        let host = try host(kvmDevice: kvmDevice)
        guard host.khz != 0, !agree(guestKHz, host.khz) else { return .same }
        return host.scaling ? .scale(guestKHz: guestKHz, hostKHz: host.khz) : .mismatch(guestKHz: guestKHz, hostKHz: host.khz)
    }

    /// "2445406 kHz" as "2445.406 MHz".
    public static func format(_ khz: UInt32) -> String { String(format: "%.3f MHz", Double(khz) / 1000) }
}
