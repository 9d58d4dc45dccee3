import Machine

extension MachineController {
    /// Each disk's volume and path, and its mirror's state (`x-swiftvmm-query-status`).
    static func disks(_ vm: VM) -> [[String: Any]] {
        vm.devices.disks.map { d in
            var o: [String: Any] = ["volume": d.volume, "path": d.path, "readonly": d.readonly]
            if let m = d.mirror {
                var mirror: [String: Any] = ["path": m.path, "state": m.inSync ? "in-sync" : "out-of-sync"]
                if let p = m.problem { mirror["reason"] = p; mirror["missed_blocks"] = m.missedBlocks }
                o["mirror"] = mirror
            }
            return o
        }
    }

    /// `x-swiftvmm-mirror-resync`: each out-of-sync mirror gets the blocks it missed, copied
    /// from its disk while that disk's requests wait; the guest's vCPUs keep running.
    func mirrorResync() -> Result<Any, QMPError> {
        guard let vm else { return .failure(.generic("no guest is running")) }
        let mirrored = vm.devices.disks.filter { $0.mirror != nil }
        guard !mirrored.isEmpty else { return .failure(.generic("the guest has no mirrored disk (--disk path=P,mirror=Q)")) }
        var copied: [String: Any] = [:]
        for d in mirrored {
            guard let m = d.mirror, !m.inSync else { continue }
            d.quiesce()
            defer { d.unquiesce() }
            do { copied[d.volume] = try m.resync(primary: d.path) } catch { return .failure(.generic("\(error)")) }
        }
        return .success(["copied_blocks": copied, "disks": Self.disks(vm)])
    }
}
