import Glibc

/// Every failure of the KVM layer, naming the call that failed and why.
public enum KVMError: Error, Equatable, CustomStringConvertible {
    /// Opening a device node failed (`/dev/kvm`).
    case open(path: String, errno: Int32)
    /// An ioctl failed; the name is the KVM request (`KVM_SET_USER_MEMORY_REGION`).
    case ioctl(String, errno: Int32)
    /// The kernel speaks a KVM API other than 12.
    case apiVersion(Int)
    /// A capability swiftvmm cannot run without is absent.
    case missingCapability(String)
    /// mmap of a kernel-provided area failed.
    case mmap(String, errno: Int32)
    /// A state blob has the wrong size for the structure it claims to be.
    case badStateSize(String, expected: Int, got: Int)
    /// A state blob has the right size but a value KVM must not be given.
    case badState(String, String)

    public var description: String {
        switch self {
        case .open(let path, let e):
            if e == EACCES || e == EPERM {
                return "cannot open \(path): permission denied (run as root or join the kvm group)"
            }
            if e == ENOENT { return "cannot open \(path): no such device (is the kvm module loaded?)" }
            return "cannot open \(path): \(errnoString(e))"
        case .ioctl(let name, let e): return "\(name) failed: \(errnoString(e))"
        case .apiVersion(let v): return "KVM API version \(v) is not supported (need 12)"
        case .missingCapability(let c): return "KVM lacks \(c), which swiftvmm needs"
        case .mmap(let what, let e): return "mmap of \(what) failed: \(errnoString(e))"
        case .badStateSize(let what, let expected, let got):
            return "\(what) state is \(got) bytes, expected \(expected)"
        case .badState(let what, let why): return "\(what) state: \(why)"
        }
    }
}

/// `strerror` as a Swift string.
public func errnoString(_ e: Int32) -> String {
    guard let s = strerror(e) else { return "errno \(e)" }
    return String(cString: s) + " (errno \(e))"
}
