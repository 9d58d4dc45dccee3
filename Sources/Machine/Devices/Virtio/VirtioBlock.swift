import Foundation
import Glibc

/// A virtio-blk disk over a raw image file (or block device): IN, OUT, FLUSH (`fdatasync`) and
/// GET_ID (the volume name), served on the device's worker thread with pread/pwrite.
public final class VirtioBlock: VirtioDevice {
    /// What migrates besides the transport: the volume (the target maps it to its own path),
    /// its size and whether it is read-only.
    public struct State: ComponentState {
        public var volume: String
        /// Size in 512-byte sectors.
        public var capacity: UInt64
        public var readonly: Bool
        public init(volume: String, capacity: UInt64, readonly: Bool) {
            self.volume = volume; self.capacity = capacity; self.readonly = readonly
        }

        public static var version: UInt32 { 1 }

        public func encode(into n: inout StateNode) {
            n.set("volume", string: volume)
            n.set("capacity", capacity)
            n.set("readonly", readonly)
        }

        public init(decoding n: StateNode, version: UInt32) throws(StateError) {
            volume = try n.string("volume")
            capacity = try n.integer("capacity")
            readonly = try n.bool("readonly")
        }
    }

    public static var typeName: String { "virtio-blk" }
    public static var kind: DeviceKind { .virtioBlock }

    public static let sectorSize: UInt64 = 512
    public static let queueSize: UInt16 = 256
    /// Data segments per request the driver may use (queue size minus header and status).
    public static let segmentMax: UInt32 = 254
    /// Largest data segment the driver may use.
    public static let segmentSizeMax: UInt32 = 128 << 10
    /// Largest request accepted (sum of its buffers): what seg_max × size_max allows, plus
    /// header and status.
    public static let maxRequestBytes: UInt64 = UInt64(segmentMax) * UInt64(segmentSizeMax) + 4096
    /// Bytes of a GET_ID answer.
    public static let idBytes = 20

    public enum Feature {
        public static let sizeMax: UInt64 = 1 << 1
        public static let segMax: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
    }

    enum RequestType: UInt32 {
        case read = 0, write = 1, flush = 4, getID = 8
    }

    enum RequestStatus: UInt8 {
        case ok = 0, ioError = 1, unsupported = 2
    }

    /// Name migration matches the disk by.
    public let volume: String
    /// Host path of the image (not state: the target has its own).
    public let path: String
    public let readonly: Bool
    /// Size in 512-byte sectors.
    public let capacity: UInt64
    public let features: UInt64
    /// Blocks written while a migration copies this disk.
    public let dirtyLog: DiskDirtyLog
    /// The second image every write also goes to (`--disk …,mirror=Q`).
    public let mirror: DiskMirror?
    let memory: GuestMemory
    let fd: Int32

    public var deviceID: UInt32 { VirtioSpec.DeviceID.block }
    public var queueSizes: [UInt16] { [Self.queueSize] }
    public var maxChainBytes: UInt64 { Self.maxRequestBytes }
    public var volumeName: String? { volume }

    /// Opens `path` (read-only with `readonly`), or takes a duplicate of `descriptor` (an image
    /// handed over by another process); and opens `mirror` when given. The image must be a
    /// non-empty multiple of 512 bytes.
    public init(path: String, volume: String, readonly: Bool, mirror: String? = nil, memory: GuestMemory,
                descriptor: Int32? = nil) throws(VirtioError) {
        let fd = descriptor.map { fcntl($0, F_DUPFD_CLOEXEC, 0) } ?? open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            if e == EROFS || (e == EACCES && !readonly) {
                throw .disk(path: path, reason: "cannot open it for writing (\(String(cString: strerror(e)))); add readonly")
            }
            throw .disk(path: path, reason: "cannot open it: \(String(cString: strerror(e)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw .disk(path: path, reason: "cannot stat it: \(String(cString: strerror(errno)))") }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else { close(fd); throw .disk(path: path, reason: "is not a regular file or block device") }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0 else { close(fd); throw .disk(path: path, reason: "cannot find its size: \(String(cString: strerror(errno)))") }
        let size = UInt64(end)
        guard size > 0, size % Self.sectorSize == 0 else {
            close(fd)
            throw .disk(path: path, reason: "is \(size) bytes; a disk image must be a non-empty multiple of 512 bytes")
        }
        if let format = ImageFormat.recognise(fd: fd) {
            close(fd)
            throw .disk(path: path, reason: "is a \(format) image; swiftvmm serves raw images only (convert it: qemu-img convert -O raw)")
        }
        do throws(VirtioError) {
            self.mirror = try mirror.map { m throws(VirtioError) in try DiskMirror(path: m, volume: volume, bytes: size, primaryFD: fd) }
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
        self.path = path
        self.volume = volume
        self.readonly = readonly
        self.capacity = size / Self.sectorSize
        self.dirtyLog = DiskDirtyLog(bytes: size)
        self.memory = memory
        var features = VirtioSpec.Feature.version1 | VirtioSpec.Feature.ringEventIdx | VirtioSpec.Feature.ringIndirectDesc
            | Feature.sizeMax | Feature.segMax | Feature.blockSize | Feature.flush
        if readonly { features |= Feature.readOnly }
        self.features = features
    }

    deinit {
        mirror?.shutDown()
        close(fd)
    }

    /// capacity, size_max, seg_max, geometry, blk_size, then zeros (topology, writeback, …).
    public func configSpace() -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 64)
        func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { c[offset + i] = b } }
        }
        put(capacity, at: 0)
        put(Self.segmentSizeMax, at: 8)
        put(Self.segmentMax, at: 12)
        put(UInt32(Self.sectorSize), at: 20)
        return c
    }

    // MARK: requests

    public func reset() {}

    public func work(_ wake: VirtioWakeReason, _ queues: any VirtioQueues) {
        guard wake.queue(0) else { return }
        repeat {
            var batch: [VirtioRequest] = []
            while batch.count < 32, let r = queues.next(0) { batch.append(r) }
            if !batch.isEmpty {
                // The I/O runs with the transport unlocked: vCPUs may read registers meanwhile;
                // a reset or quiesce waits for these requests.
                let results = queues.unlocked(requests: batch.count) { batch.map { execute($0) } }
                for (head, length) in results { queues.complete(0, head: head, length: length) }
                queues.notifyUsed(0)
            }
        } while queues.moreAvailable(0)
    }

    /// Serves one request; returns the head and how many bytes the device wrote into it.
    func execute(_ request: VirtioRequest) -> (UInt16, UInt32) {
        let chain: DescriptorChain
        switch request {
        case .chain(let c): chain = c
        case .bad(let head, _, let status):
            // A sound chain with one bad buffer still gets its IOERR status byte.
            guard let s = status, let at = s.address.adding(UInt64(s.length - 1)),
                  (try? memory.store(RequestStatus.ioError.rawValue, at: at)) != nil else { return (head, 0) }
            return (head, 1)
        }
        // The status byte is the last byte of the last buffer, which must be device-writable.
        guard let last = chain.segments.last, last.writable, last.length > 0,
              let statusAddress = last.address.adding(UInt64(last.length - 1)) else {
            return (chain.head, 0)
        }
        let (status, written) = perform(chain)
        do { try memory.store(status.rawValue, at: statusAddress) } catch { return (chain.head, written) }
        return (chain.head, written + 1)
    }

    /// The buffers of `chain` between the 16-byte header and the status byte.
    private func dataRanges(_ chain: DescriptorChain) -> [VirtioSegment] {
        let total = chain.readableLength + chain.writableLength
        let dataStart: UInt64 = 16, dataEnd = total - 1
        var out: [VirtioSegment] = []
        var position: UInt64 = 0
        for s in chain.segments {
            let start = max(position, dataStart), end = min(position + UInt64(s.length), dataEnd)
            if start < end {
                out.append(VirtioSegment(address: GuestAddress(s.address.raw + (start - position)),
                                         length: UInt32(end - start), writable: s.writable))
            }
            position += UInt64(s.length)
        }
        return out
    }

    private func perform(_ chain: DescriptorChain) -> (RequestStatus, UInt32) {
        guard chain.readableLength >= 16 else { return (.ioError, 0) }
        var header = [UInt8](repeating: 0, count: 16)
        var got = 0
        for s in chain.segments where !s.writable && got < 16 {
            let n = min(Int(s.length), 16 - got)
            guard let bytes = try? memory.read(s.address, count: n) else { return (.ioError, 0) }
            header.replaceSubrange(got..<(got + n), with: bytes)
            got += n
        }
        let typeRaw = header.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        let sector = header.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
        guard let type = RequestType(rawValue: typeRaw) else { return (.unsupported, 0) }
        let data = dataRanges(chain)
        let dataLength = data.reduce(UInt64(0)) { $0 + UInt64($1.length) }
        switch type {
        case .read, .write:
            let writing = type == .write
            if writing && readonly { return (.ioError, 0) }
            // IN fills device-writable buffers; OUT reads device-readable ones.
            guard data.allSatisfy({ $0.writable != writing }) else { return (.ioError, 0) }
            guard dataLength % Self.sectorSize == 0 else { return (.ioError, 0) }
            let sectors = dataLength / Self.sectorSize
            guard sector <= capacity, sectors <= capacity - sector else { return (.ioError, 0) }
            var offset = sector * Self.sectorSize
            for s in data {
                let ok = transfer(s, fileOffset: offset, writing: writing)
                if ok && writing { mirrorWrite(s, fileOffset: offset) }
                if writing { dirtyLog.mark(offset: offset, length: UInt64(s.length)) }
                guard ok else {
                    return (.ioError, writing ? 0 : UInt32(offset - sector * Self.sectorSize))
                }
                offset += UInt64(s.length)
            }
            return (.ok, writing ? 0 : UInt32(dataLength))
        case .flush:
            while fdatasync(fd) != 0 {
                if errno != EINTR { return (.ioError, 0) }
            }
            mirror?.flush()
            return (.ok, 0)
        case .getID:
            guard data.allSatisfy({ $0.writable }) else { return (.ioError, 0) }
            var id = Array(volume.utf8.prefix(Self.idBytes))
            id += [UInt8](repeating: 0, count: Self.idBytes - id.count)
            var written = 0
            for s in data where written < id.count {
                let n = min(Int(s.length), id.count - written)
                do { try memory.write(id[written..<(written + n)], at: s.address) } catch { return (.ioError, UInt32(written)) }
                written += n
            }
            return (.ok, UInt32(written))
        }
    }

    /// Moves one buffer between guest memory and the image, marking guest pages dirty on reads.
    private func transfer(_ s: VirtioSegment, fileOffset: UInt64, writing: Bool) -> Bool {
        guard let p = memory.pointer(s.address, length: UInt64(s.length)) else { return false }
        var done = 0
        let length = Int(s.length)
        defer { if !writing && done > 0 { memory.markDirty(s.address, length: UInt64(done)) } }
        while done < length {
            let n = writing ? pwrite(fd, p + done, length - done, off_t(fileOffset) + off_t(done))
                            : pread(fd, p + done, length - done, off_t(fileOffset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }

    /// A write the primary took goes to the mirror too (which marks it dirty if it cannot).
    private func mirrorWrite(_ s: VirtioSegment, fileOffset: UInt64) {
        guard let m = mirror, let p = memory.pointer(s.address, length: UInt64(s.length)) else { return }
        m.write(UnsafeRawPointer(p), count: Int(s.length), offset: fileOffset)
    }

    // MARK: state

    public func saveState() -> State { State(volume: volume, capacity: capacity, readonly: readonly) }

    public func validate(_ s: State) throws(StateError) {
        let name = "\(Self.typeName) volume '\(volume)'"
        guard s.volume == volume else { throw .invalid(node: name, reason: "state is for volume '\(s.volume)'") }
        guard s.capacity == capacity else {
            throw .invalid(node: name, reason: "volume had \(s.capacity) sectors, the image here has \(capacity)")
        }
        guard s.readonly == readonly else {
            throw .invalid(node: name, reason: "volume was \(s.readonly ? "read-only" : "writable"), here it is \(readonly ? "read-only" : "writable")")
        }
    }

    public func restore(_ state: State) {}
}

/// A virtio-blk disk on the virtio-mmio transport.
public typealias VirtioBlockDevice = VirtioMMIODevice<VirtioBlock>

extension VirtioMMIODevice where Device == VirtioBlock {
    /// The volume name (what a migration target maps to its own image).
    public var volume: String { device.volume }
    /// Host path of the image.
    public var path: String { device.path }
    public var readonly: Bool { device.readonly }
    /// Size in 512-byte sectors.
    public var capacity: UInt64 { device.capacity }
    /// Blocks written while a migration copies this disk.
    public var dirtyLog: DiskDirtyLog { device.dirtyLog }
    /// The disk's mirror, if it has one.
    public var mirror: DiskMirror? { device.mirror }
}
