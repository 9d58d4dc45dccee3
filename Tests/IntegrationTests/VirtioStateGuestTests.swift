import Foundation
import Glibc
import Harness
import Testing
import Machine

/// Serial output collected in memory; waits are woken by each write.
final class CaptureSink: SerialSink {
    private let log = OutputLog()
    func write(_ bytes: UnsafeRawBufferPointer) { log.append(bytes) }
    var output: String { log.text }

    /// Waits until the output contains `needle`.
    func waitFor(_ needle: String, timeout: Double = 30) -> Bool { log.waitFor(needle, timeout: timeout) }

    /// The largest n of the `SEQ n` lines so far.
    var lastSeq: Int {
        output.split(separator: "\n").reversed().lazy.compactMap { l -> Int? in
            l.hasPrefix("SEQ ") ? Int(l.dropFirst(4)) : nil
        }.first ?? 0
    }
}

/// Boots a guest in this process with `VM` directly, so a test can stop it at any moment and
/// work the devices' migration API (quiesce, save, restore, unquiesce) while I/O is in flight.
final class InProcessGuest {
    let vm: VM
    let serial = CaptureSink()

    init(kernel: String, memory: UInt64 = 64 << 20, name: String = "inproc",
         devices: (DeviceManager) throws -> Void, cmdline: String) throws {
        vm = try VM(config: VMConfig(name: name, memorySize: memory, cpus: 1, serial: serial))
        try devices(vm.devices)
        let tokens = vm.devices.commandLineTokens
        let plan = try KernelLoader.plan(BootConfig(kernel: fileBytes(kernel), initrd: nil,
                                                    cmdline: ([cmdline] + tokens).joined(separator: " "),
                                                    memoryMap: vm.memory.map, cpus: 1))
        try vm.load(plan)
        vm.start()
    }

    /// Stops the guest if it still runs and the device threads with it.
    func tearDown() {
        vm.stop(.signal(SIGTERM))
        _ = vm.waitForStop()
        vm.devices.shutdown()
    }

    /// Pauses the vCPUs, quiesces the devices, saves each virtio device's state, resets the
    /// device as a guest would (status 0, losing everything), restores the saved state, and
    /// lets the guest go on. Returns the saved states.
    @discardableResult
    func saveResetRestore(whilePaused: () -> Void = {}, sourceLocation: SourceLocation = #_sourceLocation) throws -> [StateNode] {
        #expect(vm.pause(), sourceLocation: sourceLocation)
        vm.devices.quiesce()
        whilePaused()
        var states: [StateNode] = []
        for d in vm.devices.virtio {
            let saved = try d.saveNode()
            for q in d.transportState.queues where q.ready {
                #expect(q.nextAvail == q.nextUsed, "\(d.stateName): requests in flight after quiesce", sourceLocation: sourceLocation)
            }
            withUnsafeBytes(of: UInt32(0)) { d.write(offset: VirtioSpec.Register.status, data: $0) }
            #expect(d.status == 0, sourceLocation: sourceLocation)
            try d.restoreNode(saved)
            #expect(try d.saveNode() == saved, "\(d.stateName) differs after restore", sourceLocation: sourceLocation)
            states.append(saved)
        }
        vm.devices.unquiesce()
        vm.resume()
        return states
    }
}

/// Device state round trips while a real guest driver has I/O in flight.
@Suite("virtio state with running guests", .serialized)
struct VirtioStateGuestTests {
    @Test("virtio-blk: save/reset/restore three times while blktest writes; every acknowledged write is on disk")
    func blockStateRoundTripUnderLoad() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = try makeImage(dir, "state.img", bytes: 1 << 20)
        let guest = try InProcessGuest(kernel: Paths.guest("blktest.elf"), devices: { vm in
            try vm.addDisk(DiskConfig(path: image, volume: "state"))
        }, cmdline: "loop count=3000 blocks=64 flush-every=1000")
        defer { guest.tearDown() }
        #expect(guest.vm.devices.volumes == ["state"])
        var seen = 0
        for _ in 0..<3 {
            #expect(guest.serial.waitFor("SEQ \(seen + 300)\n"), "\(guest.serial.output.suffix(300))")
            try guest.saveResetRestore()
            seen = guest.serial.lastSeq
        }
        #expect(guest.vm.waitForStop() == .guest(.debugExit(value: 0)), "\(guest.serial.output.suffix(300))")
        #expect(guest.serial.output.contains("PASS seq=3000"))
        let problems = BlockFormat.verifyLoop(fileBytes(image), blocks: 64, bs: 4096, last: 3000)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
        // Notifications came through the ioeventfd, interrupts went out through the irqfd.
        let disk = guest.vm.devices.virtio
        #expect(disk.count == 1 && disk.allSatisfy { $0.usesIRQFD })
        #expect(disk.first?.statistics.notifyExits == 0)
        #expect((disk.first?.statistics.completed ?? 0) >= 3000)
    }

    @Test("virtio-net: save/reset/restore while a UDP datagram is on its way; netecho answers every one")
    func netStateRoundTripInFlight() throws {
        let net = try TestNetwork(tap: false)
        defer { net.delete() }
        let guest = try InProcessGuest(kernel: Paths.guest("netecho.elf"), name: "netstate", devices: { vm in
            // Created on this thread while it is inside the namespace: the TAP lives there.
            _ = try net.inside { try vm.addNIC(NICConfig(tap: net.tap), vmName: "netstate") }
        }, cmdline: "ip=\(TestNetwork.guestIP) count=30 quiet")
        defer { guest.tearDown() }
        try net.configure(net.tap)
        #expect(guest.serial.waitFor("NET UP"), "\(guest.serial.output)")
        let fd = try net.udpSocket()
        defer { close(fd) }
        var answered = 0
        for i in 0..<30 {
            let payload = Array("datagram \(i)".utf8)
            if i % 10 == 3 {
                // The datagram arrives while the machine is stopped and its NIC's state moves.
                try guest.saveResetRestore(whilePaused: {
                    #expect(TestNetwork.udpSend(fd, payload))
                    usleep(20_000)       // a window for the datagram to reach the TAP queue
                })
                if TestNetwork.udpReceive(fd) == payload { answered += 1 }
            } else if TestNetwork.udpEcho(fd, payload) == payload {
                answered += 1
            }
        }
        #expect(answered == 30)
        #expect(guest.vm.waitForStop() == .guest(.debugExit(value: 0)), "\(guest.serial.output.suffix(300))")
        #expect(guest.serial.output.contains("PASS echoed=30"))
        let nic = guest.vm.devices.nics
        #expect(nic.count == 1 && nic.first?.macAddress == VirtioNet.generatedMAC(vmName: "netstate", index: 0))
    }
}
