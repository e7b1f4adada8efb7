# Zeroes the payloads of the CUDA cubins in a library's .nv_fatbin section that are not for the
# kept architectures, leaving every header, size and offset as it was (so the fat binary still
# registers, and the device picks its own architecture's cubins); zeros then compress to nothing.
import struct, sys
path, keep = sys.argv[1], {int(a) for a in sys.argv[2].split(',')}
f = bytearray(open(path, 'rb').read())
e_shoff = struct.unpack_from('<Q', f, 0x28)[0]
e_shentsize, e_shnum, e_shstrndx = struct.unpack_from('<HHH', f, 0x3A)
secs = [struct.unpack_from('<IIQQQQ', f, e_shoff + i * e_shentsize) for i in range(e_shnum)]
strtab = secs[e_shstrndx][4]
name = lambda n: f[strtab + n:f.index(b'\0', strtab + n)].decode()
_, _, _, _, start, size = [s for s in secs if name(s[0]) == '.nv_fatbin'][0]
p, end, zeroed, kept = start, start + size, 0, 0
while p < end:
    magic, ver, hs, fat = struct.unpack_from('<IHHQ', f, p)
    if magic != 0xBA55ED50:
        p += 8
        continue
    q, qend = p + hs, p + hs + fat
    while q < qend:
        kind, _, ehs, psize = struct.unpack_from('<HHIQ', f, q)
        arch = struct.unpack_from('<I', f, q + 0x1C)[0]
        if arch in keep:
            kept += psize
        else:
            f[q + ehs:q + ehs + psize] = bytes(psize)
            zeroed += psize
        q += ehs + psize
    p = qend
open(path, 'wb').write(f)
print(f'kept {kept/1e6:.1f} MB of cubins, zeroed {zeroed/1e6:.1f} MB')
