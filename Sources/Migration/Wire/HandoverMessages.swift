/// S→R, right after `config` in a local hand-over: what the descriptors passed with this
/// section (SCM_RIGHTS) are, in this order — one per RAM range, then one per disk, then one
/// per NIC (its TAP queue), then the claim. The target checks every one against this and the configuration
/// before it uses any, and closes what it does not keep.
public struct HandoverOffer: WireMessage {
    public static var section: SectionType { .handover }

    public struct RAM: Codable, Sendable, Equatable { public var size: UInt64 }
    public struct Disk: Codable, Sendable, Equatable {
        public var volume: String
        public var path: String
        public var readonly: Bool
        public var bytes: UInt64
    }
    public struct NIC: Codable, Sendable, Equatable { public var interface: String }

    public var ram: [RAM]
    public var disks: [Disk]
    public var nics: [NIC]
    /// A last descriptor follows: the claim word both sides change only by compare-and-swap
    /// (`HandoverClaim`), so that the guest never runs on both sides of its shared memory.
    public var claim: Bool

    /// Descriptors that must come with the section.
    public var descriptorCount: Int { ram.count + disks.count + nics.count + (claim ? 1 : 0) }
}
