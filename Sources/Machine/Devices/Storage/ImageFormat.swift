import Glibc

/// Recognises disk-image container formats by their header. swiftvmm serves raw images only:
/// a container format would show the guest its metadata as data, and a migration copying
/// extents would copy the container, not the disk. Raw data could begin with these bytes by
/// chance; a raw image whose guest wrote a qcow2 magic at sector 0 is refused too, as QEMU
/// warns when it probes one.
public enum ImageFormat {
    /// (name, offset, magic) of the formats with a fixed header magic.
    static let magics: [(String, Int, [UInt8])] = [
        ("qcow2", 0, Array("QFI".utf8) + [0xfb]),
        ("QED", 0, Array("QED".utf8) + [0]),
        ("VMDK", 0, Array("KDMV".utf8)),
        ("VMDK descriptor", 0, Array("# Disk DescriptorFile".utf8)),
        ("VHDX", 0, Array("vhdxfile".utf8)),
        ("VHD", 0, Array("conectix".utf8)),
        ("VDI", 64, [0x7f, 0x10, 0xda, 0xbe]),
        ("LUKS", 0, Array("LUKS".utf8) + [0xba, 0xbe]),
        ("Parallels", 0, Array("WithoutFreeSpace".utf8)),
        ("Parallels", 0, Array("WithouFreSpacExt".utf8)),
    ]

    /// The container format whose header starts `header`, or nil when it looks raw.
    public static func recognise(_ header: [UInt8]) -> String? {
        for (name, offset, magic) in magics where header.count >= offset + magic.count {
            if Array(header[offset..<(offset + magic.count)]) == magic { return name }
        }
        return nil
    }

    /// The container format of the image open at `fd` (reads its first 512 bytes), or nil.
    public static func recognise(fd: Int32) -> String? {
        var header = [UInt8](repeating: 0, count: 512)
        let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 512, 0) }
        guard n > 0 else { return nil }
        return recognise(Array(header.prefix(n)))
    }
}

extension DiskConfig {
    /// Refuses an existing image in a container format, before anything else happens (a `recv`
    /// says so at start, not when a guest arrives). A missing file is left to whoever opens it.
    public func refuseNonRawImage() throws(VMError) {
        guard !copy else { return }     // a migration overwrites it
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        if let format = ImageFormat.recognise(fd: fd) {
            throw .config("--disk \(path): is a \(format) image; swiftvmm serves raw images only (convert it: qemu-img convert -O raw)")
        }
    }
}
