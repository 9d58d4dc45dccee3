import KVM
import Synchronization

/// The devices of a machine: the port-I/O and MMIO buses, the fixed platform devices, the
/// virtio-mmio devices in their windows, and the list of everything whose state migrates, in
/// the order both sides of a migration use.
public final class DeviceManager: Sendable {
    public let pio = Bus(name: "pio")
    public let mmio = Bus(name: "mmio")
    private let kvm: VirtualMachine
    private let memory: GuestMemory
    private let list = Mutex<[any MigratableDevice]>([])

    init(kvm: VirtualMachine, memory: GuestMemory) {
        self.kvm = kvm
        self.memory = memory
    }

    /// Every device whose state migrates, in the order it was added.
    public var all: [any MigratableDevice] { list.withLock { $0 } }

    /// Adds a device to the migratable set.
    public func add(_ device: any MigratableDevice) {
        list.withLock { $0.append(device) }
    }

    /// COM1, the debug-exit port, the i8042 reset line and the CMOS clock.
    func addPlatformDevices(serial: Serial, stopper: any StopRequester) throws(VMError) {
        do {
            try pio.register(serial, base: 0x3f8, length: 8)
            try pio.register(DebugExit(stopper: stopper), base: DebugExit.port, length: 4)
            try pio.register(I8042(stopper: stopper), base: I8042.base, length: 5)
            try pio.register(CMOS(), base: CMOS.base, length: 2)
        } catch { throw .config(error.description) }
        add(serial)
    }

    // MARK: virtio

    /// Every virtio device, in device order.
    public var virtio: [any VirtioTransportDevice] { all.compactMap { $0 as? any VirtioTransportDevice } }
    /// The virtio-blk disks, in device order.
    public var disks: [VirtioBlockDevice] { all.compactMap { $0 as? VirtioBlockDevice } }
    /// The virtio-net NICs, in device order.
    public var nics: [VirtioNetDevice] { all.compactMap { $0 as? VirtioNetDevice } }
    /// Volume names of the disks, in device order.
    public var volumes: [String] { disks.map(\.volume) }

    /// Adds a virtio-blk disk.
    @discardableResult
    public func addDisk(_ disk: DiskConfig) throws(VMError) -> VirtioBlockDevice {
        guard !disk.volume.isEmpty else { throw .config("a disk needs a volume name") }
        guard !volumes.contains(disk.volume) else { throw .config("volume name '\(disk.volume)' is used twice") }
        let memory = self.memory
        return try attach { base, interrupt throws(VirtioError) in
            try VirtioMMIODevice(device: VirtioBlock(path: disk.path, volume: disk.volume, readonly: disk.readonly, mirror: disk.mirror,
                                                     memory: memory, descriptor: disk.descriptor),
                                 base: base, memory: memory, interrupt: interrupt)
        }
    }

    /// Adds a virtio-net NIC; without a MAC, one is generated from `vmName` and the NIC's index.
    @discardableResult
    public func addNIC(_ nic: NICConfig, vmName: String) throws(VMError) -> VirtioNetDevice {
        let mac = nic.mac ?? VirtioNet.generatedMAC(vmName: vmName, index: nics.count)
        let memory = self.memory
        return try attach { base, interrupt throws(VirtioError) in
            try VirtioMMIODevice(device: VirtioNet(tap: nic.tap, mac: mac, memory: memory, descriptor: nic.descriptor),
                                 base: base, memory: memory, interrupt: interrupt)
        }
    }

    /// The `virtio_mmio.device=4K@0x…:IRQ` tokens that announce the virtio devices on a
    /// kernel command line, in device order.
    public var commandLineTokens: [String] {
        virtio.enumerated().map { i, _ in
            let w = MemoryMap.virtioWindow(index: i)
            return "virtio_mmio.device=4K@\(w.base):\(w.irq)"
        }
    }

    /// Creates a device in the next virtio-mmio window: an irqfd for its interrupt (a pulsed
    /// KVM_IRQ_LINE without one), an ioeventfd per queue on QueueNotify (the MMIO write path
    /// without one), the bus registration, and the migratable-device entry.
    private func attach<D: VirtioTransportDevice>(_ make: (GuestAddress, any VirtioInterrupt) throws(VirtioError) -> D) throws(VMError) -> D {
        let index = virtio.count
        let window = MemoryMap.virtioWindow(index: index)
        guard window.irq <= MemoryMap.lastIRQ else {
            throw .config("too many virtio devices (at most \(MemoryMap.lastIRQ + 1 - MemoryMap.virtioFirstIRQ))")
        }
        var interrupt: any VirtioInterrupt = PulseInterrupt(line: KVMInterruptLine(vm: kvm, gsi: window.irq))
        if let event = try? EventFD(), (try? kvm.registerIRQFD(eventFD: event.fd, gsi: window.irq)) != nil {
            interrupt = IRQFDInterrupt(event: event, gsi: window.irq)
        }
        let device: D
        do { device = try make(window.base, interrupt) } catch { throw .config(error.description) }
        for (q, n) in device.notifiers.enumerated() {
            // Without the ioeventfd the notify write exits to the VMM and signals the same eventfd.
            try? kvm.registerIOEventFD(eventFD: n.fd, address: window.base.raw + VirtioSpec.Register.queueNotify,
                                       length: 4, datamatch: UInt64(q))
        }
        do { try mmio.register(device, base: window.base.raw, length: window.size) } catch {
            device.shutdown()
            throw .config(error.description)
        }
        add(device)
        return device
    }

    // MARK: all devices

    /// Stops every device and waits for in-flight requests (vCPUs must already be paused).
    public func quiesce() { for d in all { d.quiesce() } }

    public func unquiesce() { for d in all { d.unquiesce() } }

    /// Stops the worker threads of every virtio device (the machine is going away).
    public func shutdown() { for d in virtio { d.shutdown() } }
}
