import KVM

/// Dirty tracking of guest RAM for migration: KVM's log of guest writes, OR'd with the VMM's
/// own bitmap of device writes, which KVM cannot see.
extension VM {
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

    /// Fetches the pages of `region` written since the last call — by the guest (KVM's log) or
    /// by the VMM (device writes) — into `bitmap` (one bit per page) and re-arms tracking for
    /// them, so a write from now on shows up next time. Returns the number of dirty pages.
    public func collectDirty(_ region: MemoryRegion, into bitmap: inout [UInt64]) throws(VMError) -> Int {
        if bitmap.count != region.bitmapWords { bitmap = [UInt64](repeating: 0, count: region.bitmapWords) }
        let kvm = self.kvm
        let r: Result<Void, KVMError> = bitmap.withUnsafeMutableBufferPointer { buf in
            guard let base = buf.baseAddress else { return .success(()) }
            do {
                try kvm.getDirtyLog(slot: region.slot, into: base)
                if kvm.manualDirtyLogProtect { try Self.reprotect(kvm, region, base) }
                return .success(())
            } catch let e as KVMError { return .failure(e) } catch { return .failure(.ioctl("KVM_GET_DIRTY_LOG", errno: 5)) }
        }
        if case .failure(let e) = r { throw .kvm(e) }
        var count = 0
        for w in 0..<region.bitmapWords {
            bitmap[w] |= region.takeDirtyWord(w)
            count += bitmap[w].nonzeroBitCount
        }
        return count
    }

    /// Re-protects the pages set in `bitmap` in chunks, so no single ioctl holds the MMU lock long.
    private static func reprotect(_ kvm: VirtualMachine, _ region: MemoryRegion, _ base: UnsafeMutablePointer<UInt64>) throws(KVMError) {
        let chunkPages = 1 << 15
        var first = 0
        let total = region.pageCount
        while first < total {
            let n = min(chunkPages, total - first)
            let words = (n + 63) / 64
            var any = false
            for w in 0..<words where base[first / 64 + w] != 0 { any = true; break }
            if any {
                try kvm.clearDirtyLog(slot: region.slot, firstPage: UInt64(first), numPages: UInt32(n), bitmap: base + first / 64)
            }
            first += n
        }
    }
}
