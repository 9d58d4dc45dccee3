/// Writing the transport state down and reading it back. Reading checks what the bytes alone
/// can tell; `validate` then checks the state against the device it is meant for and against
/// guest RAM: an incoming state is untrusted (it may come from another host, or be crafted)
/// until it passes both.
extension VirtioMMIOState {
    func encode(into n: inout StateNode) {
        n.set("device-id", deviceID)
        n.set("device-features", deviceFeatures)
        n.set("driver-features", driverFeatures)
        n.set("device-features-sel", deviceFeaturesSel)
        n.set("driver-features-sel", driverFeaturesSel)
        n.set("queue-sel", queueSel)
        n.set("status", status)
        n.set("interrupt-status", interruptStatus)
        n.set("config-generation", configGeneration)
        for (i, q) in queues.enumerated() {
            var c = StateNode(name: "queue@\(i)")
            c.set("max-size", q.maxSize)
            c.set("size", q.size)
            c.set("ready", q.ready)
            c.set("desc", q.descTable.raw)
            c.set("avail", q.availRing.raw)
            c.set("used", q.usedRing.raw)
            c.set("next-avail", q.nextAvail)
            c.set("next-used", q.nextUsed)
            c.set("event-idx", q.eventIdx)
            c.set("signalled-used-valid", q.signalledUsed != nil)
            c.set("signalled-used", q.signalledUsed ?? 0)
            n.children.append(c)
        }
    }

    /// Decodes the transport registers and queues of `node`, checking what needs no device:
    /// known status and interrupt bits, the status machine's order, queue sizes within their
    /// maxima, at most 16 queues.
    init(decoding node: StateNode) throws(StateError) {
        typealias S = VirtioSpec.Status
        let name = node.name
        func invalid(_ reason: String) -> StateError { .invalid(node: name, reason: reason) }
        let children = node.children.filter { $0.name.hasPrefix("queue@") }
        guard children.count <= 16 else { throw invalid("\(children.count) queues") }
        var maxSizes: [UInt16] = []
        for i in 0..<children.count {
            guard let c = node.child("queue@\(i)") else { throw StateError.missing(node: name, property: "queue@\(i)") }
            let m: UInt16 = try c.integer("max-size")
            guard m >= 1 && m <= VirtioSpec.maxQueueSize && m & (m - 1) == 0 else { throw invalid("queue \(i): maximum size \(m)") }
            maxSizes.append(m)
        }
        self.init(deviceID: try node.integer("device-id"), deviceFeatures: try node.integer("device-features"), queueSizes: maxSizes)
        driverFeatures = try node.integer("driver-features")
        deviceFeaturesSel = try node.integer("device-features-sel")
        driverFeaturesSel = try node.integer("driver-features-sel")
        queueSel = try node.integer("queue-sel")
        status = try node.integer("status")
        interruptStatus = try node.integer("interrupt-status")
        configGeneration = try node.integer("config-generation")

        guard driverFeatures & ~deviceFeatures == 0 else { throw invalid("driver features exceed what the device offered") }
        guard status & ~S.all == 0 else { throw invalid("status 0x\(String(status, radix: 16)) has unknown bits") }
        if status & S.featuresOK != 0 {
            guard driverFeatures & VirtioSpec.Feature.version1 != 0 else { throw invalid("FEATURES_OK without VIRTIO_F_VERSION_1") }
        }
        if status & S.driverOK != 0 {
            guard status & S.featuresOK != 0 else { throw invalid("DRIVER_OK without FEATURES_OK") }
        }
        guard interruptStatus & ~(VirtioSpec.Interrupt.usedBuffer | VirtioSpec.Interrupt.configChange) == 0 else {
            throw invalid("interrupt status 0x\(String(interruptStatus, radix: 16)) has unknown bits")
        }
        let eventIdx = driverFeatures & VirtioSpec.Feature.ringEventIdx != 0 && status & S.featuresOK != 0
        for i in 0..<maxSizes.count {
            guard let c = node.child("queue@\(i)") else { throw StateError.missing(node: name, property: "queue@\(i)") }
            var q = SplitQueue(maxSize: maxSizes[i])
            q.size = try c.integer("size")
            q.ready = try c.bool("ready")
            q.descTable = GuestAddress(try c.integer("desc"))
            q.availRing = GuestAddress(try c.integer("avail"))
            q.usedRing = GuestAddress(try c.integer("used"))
            q.nextAvail = try c.integer("next-avail")
            q.nextUsed = try c.integer("next-used")
            q.eventIdx = try c.bool("event-idx")
            let signalledValid = try c.bool("signalled-used-valid")
            let signalled: UInt16 = try c.integer("signalled-used")
            q.signalledUsed = signalledValid ? signalled : nil
            guard q.size <= q.maxSize else { throw invalid("queue \(i): size \(q.size) exceeds its maximum \(q.maxSize)") }
            if q.ready {
                guard status & S.featuresOK != 0 else { throw invalid("queue \(i) is ready before FEATURES_OK") }
                guard q.nextAvail &- q.nextUsed <= q.size else {
                    throw invalid("queue \(i): \(q.nextAvail &- q.nextUsed) requests in flight, more than the queue size \(q.size)")
                }
                guard q.eventIdx == eventIdx else { throw invalid("queue \(i): EVENT_IDX flag disagrees with the negotiated features") }
            }
            queues[i] = q
        }
    }

    /// Checks a decoded state against the device it is for (`device`: device id, offered
    /// features, queue count and maximum sizes) and against guest RAM.
    func validate(name: String, against device: VirtioMMIOState, memory: GuestMemory) throws(StateError) {
        func invalid(_ reason: String) -> StateError { .invalid(node: name, reason: reason) }
        guard deviceID == device.deviceID else { throw invalid("device id \(deviceID), this device is \(device.deviceID)") }
        let unknown = driverFeatures & ~device.deviceFeatures
        guard unknown == 0 else {
            throw invalid("driver features 0x\(String(driverFeatures, radix: 16)) include 0x\(String(unknown, radix: 16)), which this device does not offer")
        }
        guard queues.count == device.queues.count else {
            throw invalid("\(queues.count) queues, this device has \(device.queues.count)")
        }
        for (i, q) in queues.enumerated() {
            let mine = device.queues[i].maxSize
            guard q.size <= mine else {
                throw invalid("queue \(i): size \(q.size) exceeds this device's maximum \(mine) (source maximum \(q.maxSize))")
            }
            if q.ready, let problem = q.configurationProblem(in: memory) { throw invalid("queue \(i): \(problem)") }
        }
    }

    /// This state with the queue maxima and offered features of the device it is loaded into.
    func adopted(by device: VirtioMMIOState) -> VirtioMMIOState {
        var s = self
        s.deviceFeatures = device.deviceFeatures
        for i in s.queues.indices where i < device.queues.count { s.queues[i].maxSize = device.queues[i].maxSize }
        return s
    }
}
