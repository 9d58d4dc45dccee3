import Machine

/// The target's side of a local hand-over: instead of pages, the descriptors of the source's
/// guest RAM, disks and TAP queues, checked one by one before anything maps or uses them.
/// They stay owned by the connection (closed with it); the machine keeps duplicates.
enum TargetHandover {
    /// Why this target cannot take the guest by hand-over, beyond the ordinary checks.
    static func reasons(_ desc: MachineDescription, _ options: ReceiveOptions) -> [String] {
        var out: [String] = []
        if !desc.sharedMemory {
            out.append("a local hand-over needs guest memory another process can map, and this guest's is private: start it with `swiftvmm run --memory-backend memfd`")
        }
        // The mirror's descriptor and its state (generation, dirty map) do not travel: the
        // guest would go on with the primary alone.
        for m in desc.mirrors {
            out.append("volume '\(m.volume)' has a mirror, which a local hand-over does not carry: migrate it without --local (recv --disk vol=\(m.volume),path=P,mirror=Q)")
        }
        if options.replay != nil {
            out.append("a local hand-over cannot be replayed from a captured stream")
        } else if case .tcp = options.endpoint {
            out.append("a local hand-over needs a unix:PATH socket: descriptors cannot pass over TCP")
        }
        return out
    }

    /// Reads the offer and its descriptors, checks them against `desc`, and returns the
    /// options to build the machine with: RAM, disks and NICs over those descriptors.
    static func receive(_ desc: MachineDescription, _ s: TargetSession) throws -> ReceiveOptions {
        let early = reasons(desc, s.options)
        if !early.isEmpty { throw MigrationError.refused(early.joined(separator: "; ")) }
        let conn = try s.conn()
        let offer = try conn.expect(HandoverOffer.self)
        let (fds, lost) = conn.peekReceivedDescriptors()
        guard !lost, fds.count == offer.descriptorCount else {
            throw MigrationError.refused("the hand-over names \(offer.descriptorCount) descriptors but \(fds.count) arrived\(lost ? " (some were lost)" : "")")
        }
        var options = s.options
        let ramFDs = Array(fds.prefix(offer.ram.count))
        try checkRAM(offer.ram, ramFDs, desc)
        options.machine.memoryBackend = .adopted(ramFDs)
        let diskFDs = Array(fds.dropFirst(offer.ram.count).prefix(offer.disks.count))
        options.machine.disks = try disks(offer.disks, diskFDs, desc)
        let nicFDs = Array(fds.dropFirst(offer.ram.count + offer.disks.count).prefix(offer.nics.count))
        options.machine.nics = try nics(offer.nics, nicFDs, desc)
        guard offer.claim, let last = fds.last else { throw MigrationError.refused("the hand-over comes without its claim descriptor") }
        switch HandoverClaim.adopt(last) {
        case .success(let claim): s.claim = claim
        case .failure(let p): throw MigrationError.refused("the hand-over claim \(p)")
        }
        return options
    }

    private static func checkRAM(_ ram: [HandoverOffer.RAM], _ fds: [Int32], _ desc: MachineDescription) throws {
        let map: MemoryMap
        do { map = try MemoryMap(memorySize: desc.memorySize) } catch { throw MigrationError.refused("guest memory layout cannot be hosted: \(error)") }
        guard ram.map(\.size) == map.ram.map(\.size) else {
            throw MigrationError.refused("the handed-over guest memory does not match the guest's memory map")
        }
        for (i, (r, fd)) in zip(ram, fds).enumerated() {
            if let p = ReceivedFile.ramProblem(fd, size: r.size) { throw MigrationError.refused("handed-over guest memory range \(i) \(p)") }
        }
    }

    private static func disks(_ disks: [HandoverOffer.Disk], _ fds: [Int32], _ desc: MachineDescription) throws -> [DiskConfig] {
        let volumes = desc.devices.filter { $0.kind == .virtioBlock }.map(\.volume)
        guard disks.map(\.volume) == volumes else {
            throw MigrationError.refused("the handed-over disks [\(disks.map(\.volume).joined(separator: ", "))] are not the guest's volumes")
        }
        return try zip(disks, fds).map { d, fd in
            guard !d.path.isEmpty, d.path.utf8.count <= 4096, d.volume.utf8.count <= 255 else {
                throw MigrationError.refused("a handed-over disk's path or volume name is malformed")
            }
            if let p = ReceivedFile.diskProblem(fd, bytes: d.bytes, readonly: d.readonly) {
                throw MigrationError.refused("handed-over disk '\(d.volume)' (\(d.path)) \(p)")
            }
            var config = DiskConfig(path: d.path, volume: d.volume, readonly: d.readonly)
            config.descriptor = fd
            return config
        }
    }

    private static func nics(_ nics: [HandoverOffer.NIC], _ fds: [Int32], _ desc: MachineDescription) throws -> [NICConfig] {
        let expected = desc.devices.filter { $0.kind == .virtioNet }.count
        guard nics.count == expected else {
            throw MigrationError.refused("\(nics.count) TAP queues were handed over for the guest's \(expected) NICs")
        }
        return try zip(nics, fds).map { n, fd in
            switch ReceivedFile.tap(fd) {
            case .failure(let p): throw MigrationError.refused("the handed-over TAP queue of \(n.interface.prefix(16)) \(p)")
            case .success(let name):
                var config = NICConfig(tap: name)
                config.descriptor = fd
                return config
            }
        }
    }
}
