import Glibc

/// The transport half of a virtio-mmio device: its registers and queues as plain data, and
/// the register-level state machine (feature negotiation, queue setup, device status). No
/// threads and no locks: `VirtioMMIODevice` owns one of these under its lock.
/// The registers of a virtio-mmio transport and its queues: everything the driver programmed
/// and the device's progress (what migrates and what tests compare).
public struct VirtioMMIOState: Sendable, Equatable {
    /// DeviceID: 1 net, 2 block.
    public var deviceID: UInt32
    /// Features the device offers.
    public var deviceFeatures: UInt64
    /// Features the driver accepted (only meaningful once FEATURES_OK is set).
    public var driverFeatures: UInt64 = 0
    /// Which 32-bit page of the features the driver reads / writes next.
    public var deviceFeaturesSel: UInt32 = 0
    public var driverFeaturesSel: UInt32 = 0
    /// The queue the Queue* registers refer to.
    public var queueSel: UInt32 = 0
    /// Device status (`VirtioSpec.Status` bits).
    public var status: UInt32 = 0
    /// Pending interrupt reasons (`VirtioSpec.Interrupt` bits) until the driver ACKs them.
    public var interruptStatus: UInt32 = 0
    public var configGeneration: UInt32 = 0
    public var queues: [SplitQueue]

    public init(deviceID: UInt32, deviceFeatures: UInt64, queueSizes: [UInt16]) {
        self.deviceID = deviceID
        self.deviceFeatures = deviceFeatures
        self.queues = queueSizes.map { SplitQueue(maxSize: $0) }
    }

    /// The driver accepted `feature` and the device confirmed it (FEATURES_OK).
    public func negotiated(_ feature: UInt64) -> Bool {
        status & VirtioSpec.Status.featuresOK != 0 && driverFeatures & feature == feature
    }
}

/// Counters a device keeps about its guest, for tests and diagnostics.
public struct VirtioStatistics: Sendable, Equatable {
    /// Requests (chains) returned to the used ring.
    public var completed = 0
    /// Malformed chains (each failed alone).
    public var badChains = 0
    /// Times the device set DEVICE_NEEDS_RESET.
    public var needsReset = 0
    /// Interrupts raised.
    public var interrupts = 0
    /// Times the worker thread woke up (a busy loop shows here).
    public var wakeups = 0
    /// Queue notifications that came through the MMIO write path (no ioeventfd matched them).
    public var notifyExits = 0
    public init() {}
}

/// What a register write asks of the device that owns the transport.
enum TransportEffect: Equatable {
    case none
    /// The driver made queues live: the worker must look at them.
    case startWork
    /// Status 0 was written: reset once in-flight requests completed.
    case reset
    /// The driver broke the rules: set DEVICE_NEEDS_RESET.
    case needsReset(String)
}

extension VirtioMMIOState {
    /// The value of the 32-bit register at `offset` (below the configuration space).
    public func register(_ offset: UInt64) -> UInt32 {
        typealias R = VirtioSpec.Register
        let q = Int(queueSel) < queues.count ? Int(queueSel) : nil
        switch offset {
        case R.magicValue: return VirtioSpec.magic
        case R.version: return VirtioSpec.mmioVersion
        case R.deviceID: return deviceID
        case R.vendorID: return VirtioSpec.vendorID
        case R.deviceFeatures:
            switch deviceFeaturesSel {
            case 0: return UInt32(truncatingIfNeeded: deviceFeatures)
            case 1: return UInt32(truncatingIfNeeded: deviceFeatures >> 32)
            default: return 0
            }
        case R.queueNumMax: return q.map { UInt32(queues[$0].maxSize) } ?? 0
        case R.queueNum: return q.map { UInt32(queues[$0].size) } ?? 0
        case R.queueReady: return q.map { queues[$0].ready ? 1 : 0 } ?? 0
        case R.interruptStatus: return interruptStatus
        case R.status: return status
        case R.queueDescLow: return q.map { UInt32(truncatingIfNeeded: queues[$0].descTable.raw) } ?? 0
        case R.queueDescHigh: return q.map { UInt32(truncatingIfNeeded: queues[$0].descTable.raw >> 32) } ?? 0
        case R.queueDriverLow: return q.map { UInt32(truncatingIfNeeded: queues[$0].availRing.raw) } ?? 0
        case R.queueDriverHigh: return q.map { UInt32(truncatingIfNeeded: queues[$0].availRing.raw >> 32) } ?? 0
        case R.queueDeviceLow: return q.map { UInt32(truncatingIfNeeded: queues[$0].usedRing.raw) } ?? 0
        case R.queueDeviceHigh: return q.map { UInt32(truncatingIfNeeded: queues[$0].usedRing.raw >> 32) } ?? 0
        case R.shmLenLow, R.shmLenHigh: return 0xffff_ffff   // no shared memory regions
        case R.configGeneration: return configGeneration
        default: return 0
        }
    }

    /// Applies a driver's register write and says what the device must do about it.
    mutating func write(_ offset: UInt64, _ value: UInt32, memory: GuestMemory) -> TransportEffect {
        typealias R = VirtioSpec.Register
        typealias S = VirtioSpec.Status
        switch offset {
        case R.deviceFeaturesSel: deviceFeaturesSel = value
        case R.driverFeaturesSel: driverFeaturesSel = value
        case R.driverFeatures:
            // Features are the driver's to choose only between DRIVER and FEATURES_OK.
            guard status & S.driver != 0, status & S.featuresOK == 0 else { return .none }
            switch driverFeaturesSel {
            case 0: driverFeatures = (driverFeatures & 0xffff_ffff_0000_0000) | UInt64(value)
            case 1: driverFeatures = (driverFeatures & 0xffff_ffff) | (UInt64(value) << 32)
            default: break
            }
        case R.queueSel: queueSel = value
        case R.queueNum, R.queueDescLow, R.queueDescHigh, R.queueDriverLow, R.queueDriverHigh,
             R.queueDeviceLow, R.queueDeviceHigh:
            writeQueueRegister(offset, value)
        case R.queueReady:
            guard Int(queueSel) < queues.count else { return .none }
            let i = Int(queueSel)
            if value & 1 == 0 {
                queues[i].ready = false
                return .none
            }
            guard !queues[i].ready, status & S.featuresOK != 0,
                  status & (S.deviceNeedsReset | S.failed) == 0 else { return .none }
            if let problem = queues[i].configurationProblem(in: memory) {
                return .needsReset("queue \(i): \(problem)")
            }
            queues[i].ready = true
            queues[i].nextAvail = 0
            queues[i].nextUsed = 0
            queues[i].signalledUsed = nil
            queues[i].eventIdx = negotiated(VirtioSpec.Feature.ringEventIdx)
            return status & S.driverOK != 0 ? .startWork : .none
        case R.interruptACK:
            interruptStatus &= ~value
        case R.status:
            return writeStatus(value)
        default:
            break
        }
        return .none
    }

    /// QueueNum and the ring addresses of the selected queue; a live queue's are frozen.
    private mutating func writeQueueRegister(_ offset: UInt64, _ value: UInt32) {
        typealias R = VirtioSpec.Register
        guard Int(queueSel) < queues.count, !queues[Int(queueSel)].ready else { return }
        let i = Int(queueSel)
        func low(_ a: GuestAddress) -> GuestAddress { GuestAddress((a.raw & 0xffff_ffff_0000_0000) | UInt64(value)) }
        func high(_ a: GuestAddress) -> GuestAddress { GuestAddress((a.raw & 0xffff_ffff) | (UInt64(value) << 32)) }
        switch offset {
        case R.queueNum:
            // Sizes above the maximum never stick; the rest is checked at QueueReady.
            if value <= UInt32(queues[i].maxSize) { queues[i].size = UInt16(value) }
        case R.queueDescLow: queues[i].descTable = low(queues[i].descTable)
        case R.queueDescHigh: queues[i].descTable = high(queues[i].descTable)
        case R.queueDriverLow: queues[i].availRing = low(queues[i].availRing)
        case R.queueDriverHigh: queues[i].availRing = high(queues[i].availRing)
        case R.queueDeviceLow: queues[i].usedRing = low(queues[i].usedRing)
        default: queues[i].usedRing = high(queues[i].usedRing)
        }
    }

    private mutating func writeStatus(_ value: UInt32) -> TransportEffect {
        typealias S = VirtioSpec.Status
        if value == 0 { return .reset }
        let old = status
        var new = (value & S.all & ~S.deviceNeedsReset) | (old & S.deviceNeedsReset)
        if new & S.featuresOK != 0 && old & S.featuresOK == 0 {
            let f = driverFeatures
            if f & ~deviceFeatures != 0 || f & VirtioSpec.Feature.version1 == 0 {
                // The driver asked for something not offered, or for a legacy device.
                new &= ~S.featuresOK
            }
        }
        // DRIVER_OK without FEATURES_OK is not a working device.
        if new & S.driverOK != 0 && new & S.featuresOK == 0 { new &= ~S.driverOK }
        status = new
        return new & S.driverOK != 0 && old & S.driverOK == 0 ? .startWork : .none
    }

    /// The state after a device reset: features, queues and pending interrupts forgotten, the
    /// configuration generation kept.
    func afterReset() -> VirtioMMIOState {
        var fresh = VirtioMMIOState(deviceID: deviceID, deviceFeatures: deviceFeatures, queueSizes: queues.map { $0.maxSize })
        fresh.configGeneration = configGeneration
        return fresh
    }
}
