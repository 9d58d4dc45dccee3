/// The DSDT's namespace: the devices a guest cannot find by probing, under `\_SB_`.
///
/// ```
/// Scope (\_SB_) {
///     Device (COM1) { _HID EISAID("PNP0501"), _UID 0,
///                     _CRS { IO (Decode16, 0x3F8, 0x3F8, 1, 8), Interrupt (Edge, ActiveHigh) {4} } }
///     Device (VR00) { _HID "LNRO0005", _UID 0,
///                     _CRS { Memory32Fixed (ReadWrite, 0xD0000000, 0x1000), Interrupt (Edge, ActiveHigh) {5} } }
///     …one VRnn per virtio-mmio device, in window order
/// }
/// ```
/// `LNRO0005` is the ID Linux's virtio_mmio driver matches in ACPI (QEMU's microvm and
/// Firecracker use it too). Virtio interrupts are edge-triggered: swiftvmm raises them as a
/// pulse (irqfd or KVM_IRQ_LINE high then low).
enum ACPIDevices {
    static let serialHID = "PNP0501"
    static let virtioHID = "LNRO0005"
    static let serialPort: UInt16 = 0x3f8
    static let serialIRQ: UInt32 = 4

    /// The DSDT's term list for `machine`.
    static func namespace(_ machine: ACPITables.Machine) -> [AML.Term] {
        var devices: [AML.Term?] = [serial()]
        for index in 0 ..< machine.virtioDevices { devices.append(virtio(index: index)) }
        return AML.scope("\\_SB_", devices).map { [$0] } ?? []
    }

    static func serial() -> AML.Term? {
        AML.device("COM1", [
            AML.name("_HID", .eisaID(serialHID)),
            AML.name("_UID", .integer(0)),
            AML.name("_CRS", .resources([.io(base: serialPort, length: 8), .interrupt(serialIRQ)])),
        ])
    }

    /// `VRnn` (nn in hex, 00…FF) for the `index`th virtio-mmio window.
    static func virtio(index: Int) -> AML.Term? {
        let window = MemoryMap.virtioWindow(index: index)
        let hex = String(index & 0xff, radix: 16, uppercase: true)
        return AML.device("VR" + (hex.count < 2 ? "0" : "") + hex, [
            AML.name("_HID", .string(virtioHID)),
            AML.name("_UID", .integer(UInt64(index))),
            AML.name("_CRS", .resources([
                .memory32Fixed(base: UInt32(truncatingIfNeeded: window.base.raw), length: UInt32(truncatingIfNeeded: window.size)),
                .interrupt(window.irq),
            ])),
        ])
    }
}
