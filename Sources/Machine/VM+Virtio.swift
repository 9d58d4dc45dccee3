/// Attaching virtio-mmio devices to a machine.
extension VM {
    /// Adds a virtio-blk device backed by the file at `path`, named `volume` (the name migration
    /// matches on the target). Returns the kernel command-line token that announces it.
    public func addVirtioBlock(path: String, volume: String, readonly: Bool) throws(VMError) -> String {
        throw .config("virtio-blk is not available yet")
    }

    /// Adds a virtio-net device on the TAP interface `tap` with `mac` (6 bytes; nil = generated
    /// stably from the VM name). Returns the kernel command-line token that announces it.
    public func addVirtioNet(tap: String, mac: [UInt8]?) throws(VMError) -> String {
        throw .config("virtio-net is not available yet")
    }
}
