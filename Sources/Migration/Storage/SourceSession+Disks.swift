import Machine

extension DiskCopySource {
    /// A dirty disk block weighs this many pages in the convergence model (64 KiB / 4 KiB).
    static let pagesPerBlock = Int(DiskDirtyLog.blockSize) / PageBatch.pageSize
}

/// Where the source's phases hand disks to `DiskCopySource` (all no-ops without `--copy-storage`).
extension SourceSession {
    func startDiskCopy() throws {
        guard options.copyStorage else { return }
        let copy = try DiskCopySource(vm: vm, lz4: options.compression == .lz4, skipping: Set(mirrorSkips.map(\.volume)))
        diskCopy = copy
        let bytes = copy.disks.reduce(UInt64(0)) { $0 + $1.bytes }
        let allocated = copy.bulkBytes
        report.diskBytes = bytes
        report.diskAllocated = allocated
        progress.update { $0.diskBytes = bytes; $0.diskAllocated = allocated }
    }

    /// Round 0: one run of disk after a batch of pages, so neither starves.
    func sendDiskBulkRun() throws {
        guard let copy = diskCopy, copy.bulkRemaining else { return }
        let before = copy.totalWire
        let raw = copy.counters.rawBytes
        try copy.sendBulkRun(try conn())
        afterDiskRun(Int(copy.totalWire - before), covered: copy.counters.rawBytes - raw)
    }

    /// Round 0: the extents left once memory is through.
    func sendDiskBulkRest() throws {
        while diskCopy?.bulkRemaining == true {
            try sendDiskBulkRun()
            try cancellation.check()
        }
    }

    /// Collects the blocks written since the last round; how many are pending.
    func collectDiskBlocks() -> Int {
        guard let copy = diskCopy else { return 0 }
        let n = copy.collect()
        progress.update { $0.diskDirtyBlocks = n }
        return n
    }

    /// Sends the collected blocks.
    func sendDiskPending() throws {
        guard let copy = diskCopy else { return }
        try copy.sendPending(try conn()) { [self] wire in
            afterDiskRun(wire, covered: 0)
            try cancellation.check()
        }
    }

    private func afterDiskRun(_ wire: Int, covered: UInt64) {
        limiter.consume(wire)
        let total = diskCopy?.totalWire ?? 0
        progress.update {
            $0.diskWireBytes = total
            $0.diskCovered = min($0.diskAllocated, $0.diskCovered + covered)
        }
    }

    /// The round's disk figures into its statistics; disk bytes count in its bandwidth.
    func recordDiskRound(_ stats: inout RoundStats, seconds: Double) {
        guard let copy = diskCopy else { return }
        let c = copy.takeRoundCounters()
        stats.diskDirtyBlocks = c.dirtyBlocks
        stats.diskRuns = c.runs
        stats.diskZeroRuns = c.zeroRuns
        stats.diskWireBytes = c.wireBytes
        stats.diskRawBytes = c.rawBytes
        stats.bandwidthBytesPerSecond = Double(stats.wireBytes + c.wireBytes) / seconds
    }

    /// `--verify-storage`: the source's image hashes, taken paused with requests drained.
    func diskHashesAtPause() throws -> [String: String]? {
        guard let copy = diskCopy, options.verifyStorage else { return nil }
        let h = try copy.hashes()
        report.diskHashes = h
        return h
    }

    /// `--verify-storage`: no commit unless the target holds the same images.
    func verifyDisks(ours: [String: String]?, theirs: [String: String]?) throws {
        guard let copy = diskCopy, let ours else { return }
        report.targetDiskHashes = theirs ?? [:]
        try copy.verify(theirs, ours: ours)
    }
}

extension MigrationReport {
    /// Disk figures of a `--copy-storage` migration (empty otherwise).
    var diskJSON: [String: Any] {
        guard diskBytes > 0 else { return [:] }
        var d: [String: Any] = [
            "disk_bytes": diskBytes, "disk_allocated_bytes": diskAllocated, "disk_final_blocks": finalDiskBlocks,
            "disk_bytes_on_wire": rounds.reduce(UInt64(0)) { $0 + $1.diskWireBytes },
            "disk_raw_bytes": rounds.reduce(UInt64(0)) { $0 + $1.diskRawBytes },
        ]
        if !diskHashes.isEmpty { d["disk_hashes"] = diskHashes }
        if !targetDiskHashes.isEmpty { d["target_disk_hashes"] = targetDiskHashes }
        return d
    }
}
