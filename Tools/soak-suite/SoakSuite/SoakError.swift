/// A failure of the soak run itself (not of the guest or the VMM it checks).
public struct SoakError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
