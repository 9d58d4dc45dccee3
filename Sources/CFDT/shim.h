#include <libfdt.h>
