import CLinux
import Glibc

/// What a local hand-over gives the next process besides the machine state: the open
/// descriptors behind guest RAM, the disks and the TAP queues. Owned by the machine: pass
/// them on, never close them.
public struct HandOverDescriptors: Sendable {
    public struct RAM: Sendable { public var fd: Int32; public var size: UInt64 }
    public struct Disk: Sendable {
        public var fd: Int32
        public var volume: String
        public var path: String
        public var readonly: Bool
        public var bytes: UInt64
    }
    public struct NIC: Sendable { public var fd: Int32; public var interface: String }

    /// Empty when guest RAM is private to this process (anonymous memory).
    public var ram: [RAM]
    public var disks: [Disk]
    public var nics: [NIC]

    /// Nothing to pass on.
    public static let none = HandOverDescriptors(ram: [], disks: [], nics: [])

    /// Every descriptor, in the order a hand-over sends them: RAM, disks, NICs.
    public var all: [Int32] { ram.map(\.fd) + disks.map(\.fd) + nics.map(\.fd) }
}

extension VM {
    /// The descriptors a local hand-over passes on (see `HandOverDescriptors`).
    public var handOverDescriptors: HandOverDescriptors {
        let ram = memory.isShareable ? memory.regions.compactMap { r in r.sharedFD.map { HandOverDescriptors.RAM(fd: $0, size: r.size) } } : []
        let disks = devices.disks.map { d in
            HandOverDescriptors.Disk(fd: d.device.fd, volume: d.device.volume, path: d.device.path, readonly: d.device.readonly,
                                     bytes: d.device.capacity * VirtioBlock.sectorSize)
        }
        let nics = devices.nics.map { HandOverDescriptors.NIC(fd: $0.device.tapFD, interface: $0.device.interfaceName) }
        return HandOverDescriptors(ram: ram, disks: disks, nics: nics)
    }
}

/// Checks of a descriptor received from another process before it is used: the right kind of
/// file, of the expected size, opened the expected way. Each answer is nil or one line.
public enum ReceivedFile {
    /// A memfd of exactly `size` bytes, sealed so that it can neither shrink nor grow (nobody
    /// can pull pages from under the mapping), open for reading and writing.
    public static func ramProblem(_ fd: Int32, size: UInt64) -> String? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return "cannot stat it: \(String(cString: strerror(errno)))" }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return "is not a memfd" }
        guard UInt64(st.st_size) == size else { return "is \(st.st_size) bytes, not \(size)" }
        let seals = clinux_file_seals(fd)
        guard seals >= 0 else { return "is not a memfd" }
        guard seals & clinux_memfd_size_seals() == clinux_memfd_size_seals() else { return "is a memfd not sealed against resizing" }
        return writable(fd) ? nil : "is not open for reading and writing"
    }

    /// A disk image (regular file or block device) of `bytes` bytes, writable unless `readonly`.
    public static func diskProblem(_ fd: Int32, bytes: UInt64, readonly: Bool) -> String? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return "cannot stat it: \(String(cString: strerror(errno)))" }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else { return "is not a regular file or block device" }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0, UInt64(end) == bytes else { return "is \(end) bytes, not \(bytes)" }
        return readonly || writable(fd) ? nil : "is not open for writing"
    }

    /// A TAP queue (IFF_TAP with a virtio-net header); returns its interface name or the problem.
    public static func tap(_ fd: Int32) -> Result<String, TapProblem> {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR else { return .failure(TapProblem("is not a character device")) }
        var name = [CChar](repeating: 0, count: Int(IFNAMSIZ) + 1)
        var flags: Int32 = 0
        let r = clinux_tap_info(fd, &name, name.count, &flags)
        guard r == 0 else { return .failure(TapProblem("is not a TUN/TAP queue (\(String(cString: strerror(-r))))")) }
        let tapFlags = Int32(clinux_iff_tap()) | Int32(clinux_iff_vnet_hdr())
        guard flags & tapFlags == tapFlags else { return .failure(TapProblem("is not a TAP with a virtio-net header")) }
        return .success(name.withUnsafeBufferPointer { p in p.baseAddress.map { String(cString: $0) } ?? "" })
    }

    public struct TapProblem: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    private static func writable(_ fd: Int32) -> Bool {
        let fl = fcntl(fd, F_GETFL)
        return fl >= 0 && (fl & O_ACCMODE) == O_RDWR
    }
}
