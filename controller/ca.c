/* placeholder: being written */
#include "ca.h"
