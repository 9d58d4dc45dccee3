import CKVM
import Glibc
import KVM

/// What migration needs from a machine: dirty tracking of guest RAM and the whole machine state
/// as a `StateNode` tree. Migration never talks to KVM itself.
extension VM {
    // MARK: dirty logging

    /// Turns on KVM dirty logging for every RAM slot. Pages written after this are reported by
    /// `collectDirty`.
    public func startDirtyLog() throws(VMError) {
        do {
            for r in memory.regions {
                try kvm.setMemoryRegion(slot: r.slot, guestAddress: r.start.raw, size: r.size, host: r.host, logDirty: true)
            }
        } catch { throw .kvm(error) }
        // Forget device writes made before logging started: round 0 sends everything anyway.
        for r in memory.regions { for w in 0..<r.bitmapWords { _ = r.takeDirtyWord(w) } }
    }

    /// Turns dirty logging off again (after a cancelled or failed migration).
    public func stopDirtyLog() {
        for r in memory.regions {
            try? kvm.setMemoryRegion(slot: r.slot, guestAddress: r.start.raw, size: r.size, host: r.host, logDirty: false)
        }
    }

    /// True when KVM leaves clearing of the dirty log to us (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`).
    public var manualDirtyProtect: Bool {
        hypervisor.check(Int32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) & 1 != 0
    }

    /// Fetches the pages of `region` written since the last call — by the guest (KVM's log) or
    /// by the VMM (device writes) — into `bitmap` (one bit per page) and re-arms tracking for
    /// them, so a write from now on shows up next time. Returns the number of dirty pages.
    public func collectDirty(_ region: MemoryRegion, into bitmap: inout [UInt64]) throws(VMError) -> Int {
        if bitmap.count != region.bitmapWords { bitmap = [UInt64](repeating: 0, count: region.bitmapWords) }
        let slot = region.slot
        let manual = manualDirtyProtect
        let vm = kvm
        let r: Result<Void, KVMError> = bitmap.withUnsafeMutableBufferPointer { buf in
            guard let base = buf.baseAddress else { return .success(()) }
            do {
                try vm.getDirtyLog(slot: slot, into: base)
                if manual {
                    // Re-protect in chunks so no single ioctl holds the MMU lock for long.
                    let chunkPages = 1 << 15
                    var first = 0
                    let total = region.pageCount
                    while first < total {
                        let n = min(chunkPages, total - first)
                        let words = (n + 63) / 64
                        var any = false
                        for w in 0..<words where base[first / 64 + w] != 0 { any = true; break }
                        if any {
                            try vm.clearDirtyLog(slot: slot, firstPage: UInt64(first), numPages: UInt32(n),
                                                 bitmap: base + first / 64)
                        }
                        first += n
                    }
                }
                return .success(())
            } catch let e as KVMError { return .failure(e) } catch { return .failure(.ioctl("KVM_GET_DIRTY_LOG", errno: EIO)) }
        }
        if case .failure(let e) = r { throw .kvm(e) }
        var count = 0
        for w in 0..<region.bitmapWords {
            bitmap[w] |= region.takeDirtyWord(w)
            count += bitmap[w].nonzeroBitCount
        }
        return count
    }

    // MARK: machine state

    /// The whole paused machine as a tree: vCPUs, irqchip, PIT, clock and every device.
    /// vCPUs must be paused and devices quiesced.
    public func saveMachineState() throws(VMError) -> StateNode {
        var root = StateNode(name: "")
        do {
            for v in vcpus {
                let s = try v.saveState(msrIndices: msrIndices)
                var n = StateNode(name: "vcpu@\(v.id)")
                n.set("regs", bytes: s.regs)
                n.set("sregs", bytes: s.sregs)
                n.set("fpu", bytes: s.fpu)
                n.set("xsave", bytes: s.xsave)
                n.set("xcrs", bytes: s.xcrs)
                n.set("lapic", bytes: s.lapic)
                n.set("events", bytes: s.events)
                n.set("debugregs", bytes: s.debugregs)
                n.set("mp-state", s.mpState)
                n.set("msr-indices", array: s.msrs.map(\.index))
                n.set("msr-values", array: s.msrs.map(\.value))
                root.children.append(n)
            }
            var chip = StateNode(name: "irqchip")
            chip.set("pic-master", bytes: try kvm.irqChip(0))
            chip.set("pic-slave", bytes: try kvm.irqChip(1))
            chip.set("ioapic", bytes: try kvm.irqChip(2))
            root.children.append(chip)
            var pit = StateNode(name: "pit")
            pit.set("state", bytes: try kvm.pit())
            root.children.append(pit)
            var clock = StateNode(name: "clock")
            clock.set("kvmclock-ns", try kvm.clock())
            root.children.append(clock)
        } catch { throw .kvm(error) }
        var devs = StateNode(name: "devices")
        for d in devices { devs.children.append(d.saveState()) }
        root.children.append(devs)
        return root
    }

    /// Loads a state tree produced by `saveMachineState` on another machine with the same
    /// configuration. Everything is validated before the first write to KVM.
    public func restoreMachineState(_ root: StateNode) throws(VMError) {
        // Validate and decode first.
        var cpuStates: [VCPUState] = []
        do {
            for v in vcpus {
                guard let n = root.child("vcpu@\(v.id)") else { throw StateError.missing(node: "/", property: "vcpu@\(v.id)") }
                let idx = try n.array("msr-indices", of: UInt32.self)
                let vals = try n.array("msr-values", of: UInt64.self)
                guard idx.count == vals.count else { throw StateError.invalid(node: n.name, reason: "MSR index and value counts differ") }
                let s = VCPUState(regs: try n.bytes("regs"), sregs: try n.bytes("sregs"), fpu: try n.bytes("fpu"),
                                  xsave: try n.bytes("xsave"), xcrs: try n.bytes("xcrs"), lapic: try n.bytes("lapic"),
                                  events: try n.bytes("events"), debugregs: try n.bytes("debugregs"),
                                  mpState: try n.integer("mp-state"),
                                  msrs: zip(idx, vals).map { MSREntry(index: $0, value: $1) })
                for (key, size) in VCPUState.sizes {
                    let got = try n.bytes(key).count
                    guard got == size else { throw StateError.badSize(node: n.name, property: key, expected: size, got: got) }
                }
                cpuStates.append(s)
            }
            if root.children.contains(where: { $0.name.hasPrefix("vcpu@") && !vcpus.map({ "vcpu@\($0.id)" }).contains($0.name) }) {
                throw StateError.invalid(node: "/", reason: "state has more vCPUs than this machine (\(vcpus.count))")
            }
        } catch let e as StateError { throw .config(e.description) } catch { throw .config("\(error)") }
        guard let chip = root.child("irqchip"), let pit = root.child("pit"), let clock = root.child("clock"),
              let devs = root.child("devices") else {
            throw .config("machine state lacks irqchip, pit, clock or devices")
        }
        let mine = devices
        let names = devs.children.map(\.name)
        guard names == mine.map(\.stateName) else {
            throw .config("device mismatch: stream has [\(names.joined(separator: ", "))], this machine has [\(mine.map(\.stateName).joined(separator: ", "))]")
        }
        do {
            let ns: UInt64 = try clock.integer("kvmclock-ns")
            try kvm.setClock(ns)
            for (v, s) in zip(vcpus, cpuStates) { try v.restoreState(s) }
            try kvm.setIRQChip(try chip.bytes("pic-master"))
            try kvm.setIRQChip(try chip.bytes("pic-slave"))
            try kvm.setIRQChip(try chip.bytes("ioapic"))
            try kvm.setPIT(try pit.bytes("state"))
        } catch let e as KVMError { throw .kvm(e) } catch { throw .config("\(error)") }
        for (d, n) in zip(mine, devs.children) {
            do { try d.restoreState(n) } catch { throw .config(error.description) }
        }
    }
}
