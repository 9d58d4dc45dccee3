import KVM

/// An interrupt line a device drives.
public protocol InterruptLine: Sendable {
    func set(level: Bool)
}

/// A GSI of the in-kernel irqchip, driven with KVM_IRQ_LINE.
public struct KVMInterruptLine: InterruptLine {
    let vm: VirtualMachine
    public let gsi: UInt32
    public init(vm: VirtualMachine, gsi: UInt32) { self.vm = vm; self.gsi = gsi }
    public func set(level: Bool) { try? vm.setIRQLine(gsi, level: level) }
}

/// A line nobody listens to (unit tests, devices without an interrupt).
public struct NullInterruptLine: InterruptLine {
    public init() {}
    public func set(level: Bool) {}
}
