import KVM

/// Attaching virtio-mmio devices to a machine, and finding them again (migration).
extension VM {
    /// Adds a virtio-blk device backed by the file at `path`, named `volume` (the name migration
    /// matches on the target). Returns the kernel command-line token that announces it.
    public func addVirtioBlock(path: String, volume: String, readonly: Bool) throws(VMError) -> String {
        guard !volume.isEmpty else { throw .config("a disk needs a volume name") }
        guard !virtioBlockVolumes.contains(volume) else { throw .config("volume name '\(volume)' is used twice") }
        return try attachVirtio { base, interrupt throws(VirtioError) in
            try VirtioBlock(path: path, volume: volume, readonly: readonly, memory: memory, base: base, interrupt: interrupt)
        }
    }

    /// Adds a virtio-net device on the TAP interface `tap` with `mac` (6 bytes; nil = generated
    /// stably from the VM name). Returns the kernel command-line token that announces it.
    public func addVirtioNet(tap: String, mac: [UInt8]?) throws(VMError) -> String {
        let address = mac ?? VirtioNet.generatedMAC(vmName: config.name, index: virtioNetDevices().count)
        return try attachVirtio { base, interrupt throws(VirtioError) in
            try VirtioNet(tap: tap, mac: address, memory: memory, base: base, interrupt: interrupt)
        }
    }

    /// Volume names of the virtio-blk disks, in device order.
    public var virtioBlockVolumes: [String] { virtioBlockDevices().map(\.volume) }

    /// The virtio-blk disks, in device order.
    public func virtioBlockDevices() -> [VirtioBlock] { devices.compactMap { $0 as? VirtioBlock } }

    /// The virtio-net NICs, in device order (migration calls `announce()` on each after a move).
    public func virtioNetDevices() -> [VirtioNet] { devices.compactMap { $0 as? VirtioNet } }

    /// Every virtio device, in device order.
    public func virtioDevices() -> [VirtioMMIODevice] { devices.compactMap { $0 as? VirtioMMIODevice } }

    /// Stops the worker threads of every virtio device (the machine is going away).
    public func shutdownVirtioDevices() {
        for d in virtioDevices() { d.shutdown() }
    }

    /// Creates a device in the next virtio-mmio window: an irqfd for its interrupt (a pulsed
    /// KVM_IRQ_LINE without one), an ioeventfd per queue on QueueNotify (the MMIO write path
    /// without one), the bus registration, and the migratable-device entry.
    func attachVirtio(_ make: (GuestAddress, any VirtioInterrupt) throws(VirtioError) -> VirtioMMIODevice) throws(VMError) -> String {
        let index = nextVirtioIndex
        let window = MemoryMap.virtioWindow(index: index)
        guard window.irq <= 23 else { throw .config("too many virtio devices (at most \(24 - MemoryMap.virtioFirstIRQ))") }
        var interrupt: any VirtioInterrupt = PulseInterrupt(line: KVMInterruptLine(vm: kvm, gsi: window.irq))
        if let event = try? EventFD(), (try? kvm.registerIRQFD(eventFD: event.fd, gsi: window.irq)) != nil {
            interrupt = IRQFDInterrupt(event: event, gsi: window.irq)
        }
        let device: VirtioMMIODevice
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
        addDevice(device)
        return "virtio_mmio.device=4K@\(window.base):\(window.irq)"
    }
}
