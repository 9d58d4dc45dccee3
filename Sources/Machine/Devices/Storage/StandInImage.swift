import CLinux
import Glibc

/// A disk image that exists only in memory: a sparse memfd of zeros, costing nothing until
/// written. What a migration's dry run builds a copied disk on, whose real image does not
/// exist until the migration writes it.
public enum StandInImage {
    /// A new descriptor of `bytes` zero bytes, owned by the caller (close it when done).
    public static func open(bytes: UInt64, volume: String) throws(VirtioError) -> Int32 {
        let fd = clinux_memfd_create("swiftvmm-stand-in-\(volume)", bytes)
        guard fd >= 0 else { throw .disk(path: "(stand-in for volume '\(volume)')", reason: "memfd_create: \(String(cString: strerror(-fd)))") }
        return fd
    }
}
