/// Numbers from the VIRTIO 1.2 specification that the transport and devices share.
public enum VirtioSpec {
    /// "virt" in little-endian: the first register of every virtio-mmio window.
    public static let magic: UInt32 = 0x7472_6976
    /// virtio-mmio version 2 (modern, VIRTIO 1.x).
    public static let mmioVersion: UInt32 = 2
    /// Vendor id, the same as QEMU's ("QEMU" in little-endian) so guest drivers treat us alike.
    public static let vendorID: UInt32 = 0x554d_4551

    /// Device ids.
    public enum DeviceID {
        public static let net: UInt32 = 1
        public static let block: UInt32 = 2
    }

    /// Register offsets of the virtio-mmio window.
    public enum Register {
        public static let magicValue: UInt64 = 0x000
        public static let version: UInt64 = 0x004
        public static let deviceID: UInt64 = 0x008
        public static let vendorID: UInt64 = 0x00c
        public static let deviceFeatures: UInt64 = 0x010
        public static let deviceFeaturesSel: UInt64 = 0x014
        public static let driverFeatures: UInt64 = 0x020
        public static let driverFeaturesSel: UInt64 = 0x024
        public static let queueSel: UInt64 = 0x030
        public static let queueNumMax: UInt64 = 0x034
        public static let queueNum: UInt64 = 0x038
        public static let queueReady: UInt64 = 0x044
        public static let queueNotify: UInt64 = 0x050
        public static let interruptStatus: UInt64 = 0x060
        public static let interruptACK: UInt64 = 0x064
        public static let status: UInt64 = 0x070
        public static let queueDescLow: UInt64 = 0x080
        public static let queueDescHigh: UInt64 = 0x084
        public static let queueDriverLow: UInt64 = 0x090
        public static let queueDriverHigh: UInt64 = 0x094
        public static let queueDeviceLow: UInt64 = 0x0a0
        public static let queueDeviceHigh: UInt64 = 0x0a4
        public static let shmSel: UInt64 = 0x0ac
        public static let shmLenLow: UInt64 = 0x0b0
        public static let shmLenHigh: UInt64 = 0x0b4
        public static let shmBaseLow: UInt64 = 0x0b8
        public static let shmBaseHigh: UInt64 = 0x0bc
        public static let configGeneration: UInt64 = 0x0fc
        public static let config: UInt64 = 0x100
    }

    /// Bits of the device status register.
    public enum Status {
        public static let acknowledge: UInt32 = 0x01
        public static let driver: UInt32 = 0x02
        public static let driverOK: UInt32 = 0x04
        public static let featuresOK: UInt32 = 0x08
        public static let deviceNeedsReset: UInt32 = 0x40
        public static let failed: UInt32 = 0x80
        public static let all: UInt32 = 0xcf
    }

    /// Bits of InterruptStatus.
    public enum Interrupt {
        public static let usedBuffer: UInt32 = 0x1
        public static let configChange: UInt32 = 0x2
    }

    /// Feature bits common to every device (bit numbers as masks).
    public enum Feature {
        public static let ringIndirectDesc: UInt64 = 1 << 28
        public static let ringEventIdx: UInt64 = 1 << 29
        public static let version1: UInt64 = 1 << 32
    }

    /// Descriptor flags of a split virtqueue.
    public enum DescriptorFlag {
        public static let next: UInt16 = 0x1
        public static let write: UInt16 = 0x2
        public static let indirect: UInt16 = 0x4
    }

    /// `avail.flags`: the driver does not want interrupts (ignored with EVENT_IDX).
    public static let availNoInterrupt: UInt16 = 0x1

    /// Largest queue size swiftvmm offers.
    public static let maxQueueSize: UInt16 = 256
}
