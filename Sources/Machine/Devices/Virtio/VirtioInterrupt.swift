import KVM

/// How a virtio device raises its interrupt: one edge per call.
public protocol VirtioInterrupt: Sendable {
    func trigger()
}

/// An eventfd bound to a GSI with KVM_IRQFD: a write raises the line in the kernel, with no
/// exit and no ioctl from the device thread.
public struct IRQFDInterrupt: VirtioInterrupt {
    public let event: EventFD
    public let gsi: UInt32
    public init(event: EventFD, gsi: UInt32) { self.event = event; self.gsi = gsi }
    public func trigger() { event.signal() }
}

/// A pulse (high, then low) on a line driven with KVM_IRQ_LINE: the fallback without irqfd.
public struct PulseInterrupt: VirtioInterrupt {
    public let line: any InterruptLine
    public init(line: any InterruptLine) { self.line = line }
    public func trigger() {
        line.set(level: true)
        line.set(level: false)
    }
}
