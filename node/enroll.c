/* placeholder: being written */
#include "enroll.h"
