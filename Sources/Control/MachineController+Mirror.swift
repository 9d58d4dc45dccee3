import Machine

/// Mirrored disks on the monitor: their state in `x-swiftvmm-query-status` (and `status`), and
/// `x-swiftvmm-mirror-resync`.
extension MachineController {
    /// One entry per mirrored disk.
    static func mirrorsJSON(_ vm: VM) -> [[String: Any]] {
        vm.devices.disks.compactMap { $0.mirror?.status }.map { s in
            var d: [String: Any] = ["volume": s.volume, "mirror": s.path, "state": s.phase.rawValue, "dirty_bytes": s.dirtyBytes,
                                    "generation": s.generation, "identity_recorded": s.identityRecorded]
            if let e = s.error { d["error"] = e }
            return d
        }
    }

    /// Resyncs every mirror (or `volume`'s) and waits until each is in sync again.
    func mirrorResync(volume: String?) -> Result<Any, QMPError> {
        guard let vm else { return .failure(.generic("no guest is running")) }
        let mirrors = vm.devices.disks.filter { volume == nil || $0.volume == volume }.compactMap(\.mirror)
        guard !mirrors.isEmpty else {
            return .failure(.generic(volume.map { "volume '\($0)' has no mirror" } ?? "the guest has no mirrored disk"))
        }
        var done: [[String: Any]] = []
        for m in mirrors {
            do throws(VirtioError) {
                let copied = try m.resync()
                done.append(["volume": m.volume, "mirror": m.path, "state": m.status.phase.rawValue, "copied_bytes": copied])
            } catch {
                return .failure(.generic("\(error)"))
            }
        }
        return .success(["mirrors": done])
    }
}
