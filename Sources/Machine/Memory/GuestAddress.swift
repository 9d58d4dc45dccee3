/// A guest-physical address. Never a bare `UInt64` in an API.
public struct GuestAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var raw: UInt64

    public init(_ raw: UInt64) { self.raw = raw }

    public static func < (a: GuestAddress, b: GuestAddress) -> Bool { a.raw < b.raw }

    /// The address `offset` bytes further, or nil on overflow.
    public func adding(_ offset: UInt64) -> GuestAddress? {
        let (r, o) = raw.addingReportingOverflow(offset)
        return o ? nil : GuestAddress(r)
    }

    public var description: String { "0x" + String(raw, radix: 16) }
}
