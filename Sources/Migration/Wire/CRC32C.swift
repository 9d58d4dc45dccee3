import CFast

/// CRC-32C (Castagnoli), the checksum on every section of the migration stream.
public enum CRC32C {
    /// Continues a CRC over `bytes` (start with `crc = 0`); hardware CRC32 where the CPU has it.
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return crc }
        return cfast_crc32c(crc, base, bytes.count)
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { update(0, $0) }
    }
}
