"""face_detection: faces (box, 5 landmarks, aligned 112x112 crop) found by YuNet, in CL Server's shape."""
