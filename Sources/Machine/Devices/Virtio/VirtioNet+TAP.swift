import CLinux
import Foundation
import Glibc

/// The TAP side of a virtio-net NIC, its MAC addresses and the frames the VMM itself sends.
extension VirtioNet {
    /// Attaches to the TAP interface `name`, creating it when absent. Multi-queue first, so that
    /// a migration target on the same host can attach while the source still holds it.
    static func openTAP(_ name: String) throws(VirtioError) -> (fd: Int32, name: String, multiQueue: Bool) {
        guard !name.isEmpty, name.utf8.count < Int(IFNAMSIZ) else {
            throw .tap(name: name, reason: "an interface name has 1 to \(IFNAMSIZ - 1) bytes")
        }
        let base = clinux_iff_tap() | clinux_iff_no_pi() | clinux_iff_vnet_hdr()
        var actual = [CChar](repeating: 0, count: Int(IFNAMSIZ) + 1)
        var fd = clinux_tap_open(name, base | clinux_iff_multi_queue(), &actual, actual.count)
        var multiQueue = true
        if fd == -EINVAL || fd == -EBUSY {
            // An existing single-queue TAP.
            fd = clinux_tap_open(name, base, &actual, actual.count)
            multiQueue = false
        }
        guard fd >= 0 else {
            let e = -fd
            switch e {
            case EPERM, EACCES: throw .tap(name: name, reason: "permission denied (creating or attaching a TAP needs CAP_NET_ADMIN or ownership of it)")
            case EBUSY: throw .tap(name: name, reason: "is in use by another process")
            case ENOENT, ENODEV: throw .tap(name: name, reason: "/dev/net/tun is missing (load the tun module)")
            case EINVAL: throw .tap(name: name, reason: "cannot attach: it exists and is not a TAP interface")
            default: throw .tap(name: name, reason: "cannot attach: \(String(cString: strerror(e)))")
            }
        }
        let r = clinux_tap_set_vnet_header_size(fd, Int32(headerSize))
        guard r >= 0 else {
            close(fd)
            throw .tap(name: name, reason: "TUNSETVNETHDRSZ failed: \(String(cString: strerror(-r)))")
        }
        // No offloads: the guest negotiated none, so the TAP must hand over plain frames.
        _ = clinux_tap_set_offload(fd, 0)
        let actualName = actual.withUnsafeBufferPointer { p in p.baseAddress.map { String(cString: $0) } ?? name }
        return (fd, actualName.isEmpty ? name : actualName, multiQueue)
    }

    /// A duplicate of a TAP queue descriptor another process handed over, used as it is
    /// (its virtio-net header size and offloads were set by whoever opened it).
    static func adoptTAP(_ descriptor: Int32, name: String) throws(VirtioError) -> (fd: Int32, name: String, multiQueue: Bool) {
        let fd = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
        guard fd >= 0 else { throw .tap(name: name, reason: "cannot take the handed-over descriptor: \(String(cString: strerror(errno)))") }
        return (fd, name, false)
    }

    /// Attaches or detaches our queue of a multi-queue TAP: a detached queue is skipped when
    /// the kernel spreads incoming frames over the TAP's queues.
    func setQueueAttached(_ attached: Bool) {
        guard multiQueue, attached == queueDetached else { return }
        let r = clinux_tap_set_queue_attached(tapFD, attached ? 1 : 0)
        if r < 0 {
            FileHandle.standardError.write(Data("swiftvmm: cannot \(attached ? "attach" : "detach") our queue of TAP \(interfaceName): \(String(cString: strerror(-r)))\n".utf8))
            return
        }
        queueDetached = !attached
    }

    /// A NIC that no driver has brought up (a migration target waiting for its state) gives up
    /// its share of a multi-queue TAP while quiesced, so that the running source receives all
    /// the traffic during pre-copy; it takes it back when unquiesced.
    public func quiesceChanged(_ quiesced: Bool, driverReady: Bool) {
        if quiesced {
            if !driverReady { setQueueAttached(false) }
        } else {
            setQueueAttached(true)
        }
    }

    /// 52:54:00 followed by three bytes of a hash of the VM name and NIC index: locally
    /// administered, unicast, and the same every time the VM starts.
    public static func generatedMAC(vmName: String, index: Int) -> [UInt8] {
        var h: UInt32 = 0x811c_9dc5
        for b in Array(vmName.utf8) + [0, UInt8(truncatingIfNeeded: index), UInt8(truncatingIfNeeded: index >> 8)] {
            h = (h ^ UInt32(b)) &* 0x0100_0193
        }
        return [0x52, 0x54, 0x00, UInt8(truncatingIfNeeded: h >> 16), UInt8(truncatingIfNeeded: h >> 8), UInt8(truncatingIfNeeded: h)]
    }

    public static func format(_ mac: [UInt8]) -> String {
        mac.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: ":")
    }

    /// Parses `52:54:00:12:34:56`.
    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    // MARK: VMM-originated frames

    /// Queues an Ethernet frame (no virtio header) for delivery into the guest's receive queue.
    /// Returns false when it is too big or too many frames wait already.
    func queueInjected(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 14, bytes.count <= Self.maxFrame, injected.count < Self.maxInjected else { return false }
        injected.append([UInt8](repeating: 0, count: Self.headerSize) + bytes)
        return true
    }

    /// The RARP frame QEMU announces a moved guest with: broadcast, from the guest's MAC,
    /// ethertype 0x8035, reverse request with the MAC as sender and target, padded to 60 bytes.
    public static func announcementFrame(mac: [UInt8]) -> [UInt8] {
        var f = [UInt8](repeating: 0xff, count: 6) + mac + [0x80, 0x35]
        f += [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03]
        f += mac + [0, 0, 0, 0] + mac + [0, 0, 0, 0]
        f += [UInt8](repeating: 0, count: 60 - f.count)
        return f
    }

    /// Sends one RARP announcement from `mac` out through the TAP; false when the TAP refused it.
    func sendAnnouncement(mac: [UInt8]) -> Bool {
        let frame = [UInt8](repeating: 0, count: Self.headerSize) + Self.announcementFrame(mac: mac)
        let n = frame.withUnsafeBytes { Glibc.write(tapFD, $0.baseAddress, $0.count) }
        return n == frame.count
    }

    var currentMAC: [UInt8] { mac }
    var currentCounters: Counters { traffic }
}
