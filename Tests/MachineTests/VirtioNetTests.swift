import Foundation
import Glibc
import Testing
@testable import Machine

/// A virtio-net device over one end of a datagram socket pair (frames with the 12-byte header,
/// like a TAP with IFF_VNET_HDR); the test holds the other end as "the network".
final class NetRig {
    let memory: GuestMemory
    let interrupt = CountingInterrupt()
    let device: VirtioNetDevice
    let driver: VirtioTestDriver
    let peer: Int32

    init(mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56], memory: GuestMemory? = nil) throws {
        self.memory = try memory ?? virtioTestMemory()
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw VirtioError.system("socketpair", errno: errno)
        }
        var size: Int32 = 1 << 20
        for fd in fds {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, 4)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4)
        }
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        peer = fds[1]
        device = try makeNet(fd: fds[0], interfaceName: "test", mac: mac, memory: self.memory,
                               base: GuestAddress(0xd000_1000), interrupt: interrupt)
        driver = VirtioTestDriver(memory: self.memory, device: device)
    }

    deinit {
        device.shutdown()
        close(peer)
    }

    /// Sends a frame from "the network" (a zero header is put in front).
    func send(_ frame: [UInt8]) {
        let packet = [UInt8](repeating: 0, count: 12) + frame
        _ = packet.withUnsafeBytes { write(peer, $0.baseAddress, $0.count) }
    }

    /// The next packet the device wrote (header included), or nil after `timeout` seconds.
    func receive(timeout: Double = 2) -> [UInt8]? {
        var p = pollfd(fd: peer, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 70_000)
        let n = buf.withUnsafeMutableBytes { read(peer, $0.baseAddress, $0.count) }
        return n > 0 ? Array(buf[0..<n]) : nil
    }

    /// Posts a receive buffer of `size` bytes; returns its address.
    @discardableResult
    func postRx(_ size: Int, notify: Bool = true) -> GuestAddress {
        let a = driver.allocate(size, fill: 0xcc)
        driver.submit(0, [(a, UInt32(size), true)], notify: notify)
        return a
    }

    /// Transmits `frame` with a zero header in its own descriptor.
    func transmit(_ frame: [UInt8], header: [UInt8] = [UInt8](repeating: 0, count: 12)) {
        let h = driver.allocate(12)
        try? memory.write(header, at: h)
        let f = driver.allocate(frame.count)
        try? memory.write(frame, at: f)
        driver.submit(1, [(h, 12, false), (f, UInt32(frame.count), false)])
    }
}

/// An Ethernet frame of `size` bytes to the guest's MAC with a recognisable payload.
func testFrame(to mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56], size: Int = 100, seed: UInt8 = 1) -> [UInt8] {
    var f = mac + [0x02, 0, 0, 0, 0, 1] + [0x88, 0xb5]
    while f.count < size { f.append(UInt8(truncatingIfNeeded: f.count) &+ seed) }
    return f
}

@Suite("virtio-net device")
struct VirtioNetTests {
    @Test("config space holds the MAC and link-up status; features include MAC, STATUS, MRG_RXBUF")
    func configSpace() throws {
        let rig = try NetRig()
        let d = rig.driver
        #expect(d.read32(VirtioSpec.Register.deviceID) == 1)
        #expect(d.config(0, count: 8) == [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0])
        let f = d.deviceFeatures
        #expect(f & VirtioNet.Feature.mac != 0 && f & VirtioNet.Feature.status != 0)
        #expect(f & VirtioNet.Feature.mergeableRxBuffers != 0 && f & VirtioSpec.Feature.version1 != 0)
        #expect(rig.device.stateName == "virtio-net@0xd0001000")
    }

    @Test("a transmitted chain reaches the backend with a zeroed virtio-net header")
    func transmit() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        let frame = testFrame(to: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], size: 300)
        rig.transmit(frame, header: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])   // NEEDS_CSUM is not passed on
        let got = rig.receive()
        #expect(got == [UInt8](repeating: 0, count: 12) + frame)
        let used = rig.driver.waitUsed(1)
        #expect(used.count == 1 && used.first?.1 == 0)
        #expect(rig.device.counters.txFrames == 1)
    }

    @Test("a received frame lands in a posted buffer with num_buffers 1, and its pages are marked dirty")
    func receive() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        let buf = rig.postRx(2048)
        clearDirty(rig.memory)
        let frame = testFrame(size: 200)
        // A header with DATA_VALID (as a TAP sets it) is cleared: no offloads were negotiated.
        let packet = [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] + frame
        _ = packet.withUnsafeBytes { write(rig.peer, $0.baseAddress, $0.count) }
        let used = rig.driver.waitUsed(0)
        #expect(used.first?.1 == UInt32(12 + frame.count))
        let got = try rig.memory.read(buf, count: 12 + frame.count)
        #expect(Array(got[0..<12]) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])
        #expect(Array(got[12...]) == frame)
        let dirty = takeDirtyPages(rig.memory)
        #expect(dirty.contains(buf.raw / 4096) && dirty.contains(rig.driver.queues[0].used.raw / 4096))
    }

    @Test("with mergeable buffers a large frame spans several buffers and num_buffers says how many")
    func mergeable() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        let bufs = (0..<6).map { _ in rig.postRx(512) }
        let frame = testFrame(size: 1500)
        rig.send(frame)
        let used = rig.driver.waitUsed(0, count: 3)
        #expect(used.map(\.1) == [512, 512, 488])
        var got: [UInt8] = []
        for (b, u) in zip(bufs, used) { got += try rig.memory.read(b, count: Int(u.1)) }
        #expect(got[10] == 3 && got[11] == 0)
        #expect(Array(got[12...]) == frame)
    }

    @Test("without mergeable buffers a frame too big for a buffer is dropped and the buffer kept")
    func tooBigWithoutMergeable() throws {
        let rig = try NetRig()
        let features = rig.driver.deviceFeatures & ~VirtioNet.Feature.mergeableRxBuffers
        rig.driver.initialize(features: features, queueSizes: [16, 16])
        let buf = rig.postRx(512)
        rig.send(testFrame(size: 1000))
        #expect(VirtioTestDriver.eventually { rig.device.counters.rxDropped == 1 })
        let small = testFrame(size: 64, seed: 9)
        rig.send(small)
        let used = rig.driver.waitUsed(0)
        #expect(used.first?.1 == 76)
        #expect(try rig.memory.read(GuestAddress(buf.raw + 12), count: 64) == small)
    }

    @Test("with no receive buffers frames wait (no busy loop) and arrive in order once buffers are posted")
    func noBuffersStall() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        for i in 0..<3 { rig.send(testFrame(size: 80, seed: UInt8(i))) }
        #expect(VirtioTestDriver.eventually { rig.device.withDevice { $0.waitsForBuffers } })
        // A measurement window: a stalled device must sleep through it.
        let before = rig.device.statistics.wakeups
        usleep(500_000)
        let wakeups = rig.device.statistics.wakeups - before
        #expect(wakeups <= 10, "worker woke \(wakeups) times in 0.5 s while stalled")
        #expect(rig.device.counters.rxDropped == 0)
        let bufs = (0..<3).map { _ in rig.postRx(256) }
        let used = rig.driver.waitUsed(0, count: 3)
        #expect(used.count == 3)
        for (i, b) in bufs.enumerated() {
            #expect(try rig.memory.read(GuestAddress(b.raw + 12), count: 80) == testFrame(size: 80, seed: UInt8(i)))
        }
    }

    @Test("receive buffers too small for a waiting frame do not make the device spin")
    func tooSmallBuffersNoSpin() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        for _ in 0..<3 { rig.driver.submit(0, [(rig.driver.allocate(16), 0, true)]) }   // zero-length buffers
        rig.send(testFrame(size: 300))
        #expect(VirtioTestDriver.eventually { rig.device.withDevice { $0.waitsForBuffers } })
        // A measurement window: a stalled device must sleep through it.
        let before = rig.device.statistics.wakeups
        usleep(500_000)
        let wakeups = rig.device.statistics.wakeups - before
        #expect(wakeups <= 10, "worker woke \(wakeups) times in 0.5 s")
        let buf = rig.postRx(1024)
        let used = rig.driver.waitUsed(0, count: 4)
        #expect(used.map(\.1) == [0, 0, 0, 312])
        #expect(try rig.memory.read(GuestAddress(buf.raw + 12), count: 300) == testFrame(size: 300))
    }

    @Test("a buffer posted without a notification is found by the stall re-check")
    func postedWithoutNotify() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        rig.send(testFrame(size: 80))
        #expect(VirtioTestDriver.eventually { rig.device.withDevice { $0.waitsForBuffers } }, "the frame never reached the device")
        rig.postRx(256, notify: false)
        #expect(rig.driver.waitUsed(0).count == 1)
    }

    @Test("a backend that hangs up is no longer polled (no busy loop); injected frames still arrive")
    func backendHangUp() throws {
        let memory = try virtioTestMemory()
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds) == 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        let device = try makeNet(fd: fds[0], interfaceName: "hangup", mac: [0x52, 0x54, 0, 0, 0, 1], memory: memory,
                                   base: GuestAddress(0xd000_1000), interrupt: CountingInterrupt())
        defer { device.shutdown() }
        let driver = VirtioTestDriver(memory: memory, device: device)
        driver.initialize(queueSizes: [16, 16])
        let buf = driver.allocate(256)
        driver.submit(0, [(buf, 256, true)])
        close(fds[1])
        #expect(VirtioTestDriver.eventually { device.withDevice { $0.tapFailed } }, "the hang-up was never noticed")
        // A measurement window: a device whose backend is gone must not spin on it.
        let before = device.statistics.wakeups
        usleep(400_000)
        #expect(device.statistics.wakeups - before <= 5)
        #expect(device.injectFrame(testFrame(to: [0x52, 0x54, 0, 0, 0, 1], size: 60)))
        #expect(driver.waitUsed(0).first?.1 == 72)
    }

    @Test("injectFrame delivers a VMM frame into the guest's receive queue")
    func inject() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        let buf = rig.postRx(256)
        let frame = testFrame(size: 60, seed: 42)
        #expect(rig.device.injectFrame(frame))
        #expect(rig.driver.waitUsed(0).first?.1 == 72)
        #expect(try rig.memory.read(GuestAddress(buf.raw + 12), count: 60) == frame)
        #expect(!rig.device.injectFrame([1, 2, 3]))
    }

    @Test("announce sends a RARP from the guest MAC to broadcast out through the backend")
    func announce() throws {
        let rig = try NetRig(mac: [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])
        #expect(rig.device.sendAnnouncement())
        guard let got = rig.receive() else { Issue.record("nothing sent"); return }
        #expect(got.count == 72)
        let f = Array(got[12...])
        #expect(Array(f[0..<6]) == [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        #expect(Array(f[6..<12]) == [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef])
        #expect(f[12] == 0x80 && f[13] == 0x35)
        #expect(Array(f[14..<22]) == [0, 1, 8, 0, 6, 4, 0, 3])
        #expect(Array(f[22..<28]) == [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef] && Array(f[32..<38]) == Array(f[22..<28]))
    }

    @Test("announce repeats the RARP: once at once, then twice more within half a second")
    func announceRepeats() throws {
        let rig = try NetRig()
        let start = Date()
        rig.device.announce()
        var frames = 0
        while rig.receive(timeout: 1) != nil { frames += 1 }
        #expect(frames == 3)
        #expect(Date().timeIntervalSince(start) >= 0.3)
    }

    @Test("a hostile transmit chain (device-writable part, too short) is returned and the next one goes out")
    func hostileTransmit() throws {
        let rig = try NetRig()
        rig.driver.initialize(queueSizes: [16, 16])
        let b = rig.driver.allocate(64)
        rig.driver.submit(1, [(b, 64, true)])
        rig.driver.submit(1, [(b, 4, false)])
        #expect(rig.driver.waitUsed(1, count: 2).count == 2)
        let frame = testFrame(size: 64)
        rig.transmit(frame)
        #expect(rig.receive() == [UInt8](repeating: 0, count: 12) + frame)
        #expect(rig.device.counters.txDropped == 2)
    }

    @Test("generated MACs are stable, locally administered unicast, and differ by name and index")
    func generatedMAC() {
        let a = VirtioNet.generatedMAC(vmName: "vm1", index: 0)
        #expect(a == VirtioNet.generatedMAC(vmName: "vm1", index: 0))
        #expect(Array(a[0..<3]) == [0x52, 0x54, 0x00])
        #expect(a[0] & 0x02 != 0 && a[0] & 0x01 == 0)
        #expect(a != VirtioNet.generatedMAC(vmName: "vm1", index: 1))
        #expect(a != VirtioNet.generatedMAC(vmName: "vm2", index: 0))
        #expect(VirtioNet.parseMAC("52:54:00:0a:0b:0c") == [0x52, 0x54, 0, 0x0a, 0x0b, 0x0c])
        #expect(VirtioNet.parseMAC("52:54:00:0a:0b") == nil && VirtioNet.parseMAC("52:54:00:0a:0b:zz") == nil)
        #expect(VirtioNet.format([0x52, 0x54, 0, 0x0a, 0x0b, 0x0c]) == "52:54:00:0a:0b:0c")
    }

    @Test("a multicast MAC is refused")
    func multicastMAC() throws {
        #expect(throws: VirtioError.self) { _ = try NetRig(mac: [0x01, 0, 0x5e, 0, 0, 1]) }
    }
}
