import KVM

/// Errors creating virtio devices, each naming the thing that failed.
public enum VirtioError: Error, Equatable, CustomStringConvertible {
    /// A system call failed (`eventfd`, `pthread`).
    case system(String, errno: Int32)
    /// A disk image cannot back a virtio-blk device.
    case disk(path: String, reason: String)
    /// A TAP interface cannot back a virtio-net device.
    case tap(name: String, reason: String)
    /// A device option is wrong.
    case config(String)

    public var description: String {
        switch self {
        case .system(let call, let e): return "\(call) failed: \(errnoString(e))"
        case .disk(let path, let reason): return "disk image \(path): \(reason)"
        case .tap(let name, let reason): return "TAP interface \(name): \(reason)"
        case .config(let s): return s
        }
    }
}
